"""The gamma="auto" rule: it stops for a stated reason, leaves unrelated nodes at 0, and still adjusts for
nearly separated topics."""

from __future__ import annotations

import numpy as np
import pytest

from confounded_patching.estimation.aie import aie
from confounded_patching.estimation.gamma_rule import GammaRule
from simulations import FAST, sem  # noqa: F401  (a fixture)


def test_auto_gamma_stops_for_a_stated_reason(sem):
    """The chosen gamma passes every criterion; the next path point fails at least one."""
    kw = dict(FAST, n_boot=0)
    auto = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, **kw)
    rule = GammaRule()
    assert auto.gamma >= auto.gamma_noise
    assert auto.gamma < auto.gamma_max  # it moved off the uniform start
    top = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, gamma=auto.gamma_max, gamma_x=auto.gamma_x, **kw)
    here = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, gamma=auto.gamma, gamma_x=auto.gamma_x, **kw)
    nxt = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, gamma=auto.gamma * rule.ratio, gamma_x=auto.gamma_x,
              **kw)
    assert here.value == pytest.approx(auto.value, abs=1e-3)
    assert here.pair_ess >= rule.pair_ess_floor * top.pair_ess
    stops = (nxt.status != "converged", auto.gamma * rule.ratio < auto.gamma_noise,
             nxt.pair_ess < rule.pair_ess_floor * top.pair_ess)
    assert any(stops)


def test_auto_gamma_leaves_a_node_unrelated_to_the_query_at_zero():
    rng = np.random.default_rng(7)
    q = rng.normal(size=(1500, 2))
    noise_node = rng.normal(size=(1500, 2))
    y = q[:, 0] * noise_node[:, 0] + rng.normal(size=1500)
    r = aie(q, noise_node, y, None, **FAST)
    assert r.gamma >= r.gamma_noise or r.gamma == pytest.approx(r.gamma_max)
    assert abs(r.value) < 0.03


def test_auto_gamma_for_nearly_separated_topics_still_adjusts():
    rng = np.random.default_rng(8)
    topics = rng.integers(0, 3, size=1500)
    q = np.eye(3, 2)[topics] * 4.0 + rng.normal(size=(1500, 2))  # topics almost separable in query space
    node = q @ np.array([[0.5, 0.0], [0.0, 0.5]]) + rng.normal(size=(1500, 2))
    y = (q * node).sum(1) + topics + rng.normal(size=1500)
    with pytest.warns(UserWarning, match="topics barely overlap in query space"):
        r = aie(q, node, y, topics, **FAST)
    assert r.status_x == "converged"
    assert r.ess_x < r.n  # pi_x is not the uniform fallback: the tightest feasible balance was found
