"""The estimator's partners and the statistics over the pairs: pair_index, HT rows, calibration, prompt blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.partners import Partners, pair_index, stats_ht
from confounded_patching.estimation.ratio_models import RatioModel
from simulations import FAST, quiet, sem  # noqa: F401  (a fixture)


def test_binary_outcome_terms_skip_prompts_with_zero_outcome():
    rng = np.random.default_rng(1)
    m, K, B, d = 300, 20, 3, 2
    t = lambda a: torch.tensor(a)  # noqa: E731
    y = t((rng.random(m) < 0.2).astype(float))
    q = t(rng.normal(size=(m, d)))
    J = t(pair_index(m, K, seed=1))
    lp, dx = t(rng.normal(size=m) * 0.3), t(rng.normal(size=(m, K)) * 0.3)
    model = RatioModel(a=t(rng.normal(size=(B, m)) * 0.3), U=t(rng.normal(size=(B, m, d)) * 0.3),
                       log_pi=torch.zeros(B, m), status=["converged"] * B, gamma=torch.zeros(B),
                       ess=torch.zeros(B), imbalance=torch.zeros(B), n_iter=torch.zeros(B))
    counts = t(rng.multinomial(m, np.full(m, 1 / m), size=5).astype(float))
    rows = torch.nonzero(y != 0).flatten()
    full = Partners(q, J, lp, dx, torch.arange(m)).ht_row_means(model, y, "eq2", None)[0]
    sub = Partners(q, J, lp, dx, rows).ht_row_means(model, y, "eq2", None)[0]
    for a, b in zip(stats_ht(full, counts), stats_ht(sub, counts)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_pair_index_partners_are_distinct_others_and_seeded():
    J = pair_index(50, 10, seed=3)
    assert J.shape == (50, 10)
    assert not np.any(J == np.arange(50)[:, None])
    assert all(len(set(row)) == 10 for row in J)
    np.testing.assert_array_equal(J, pair_index(50, 10, seed=3))
    assert not np.array_equal(J, pair_index(50, 10, seed=4))
    assert pair_index(5, 200).shape == (5, 4)  # K is capped at m - 1


def test_calibration_survives_log_weights_spread_beyond_float_range():
    import torch

    from confounded_patching.estimation.partners import calibrate

    g = torch.Generator().manual_seed(0)
    m = 60
    logW = torch.randn(2, m, generator=g, dtype=torch.float64) * 3
    logW[:, 0] -= 1000.0  # exp underflows to exactly 0 without a floor
    H = torch.randn(2, m, 3, generator=g, dtype=torch.float64)
    out = calibrate(logW, torch.ones(m, dtype=torch.float64), H)
    assert out.shape == logW.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("estimator", ["hajek", "ht"])
def test_prompt_blocks_of_the_pair_computations_change_nothing(sem, monkeypatch, estimator):
    """Pairs are processed in blocks of prompts for large m; tiny blocks must give the same table."""
    kw = dict(FAST, n_boot=20, estimator=estimator)
    whole = quiet(aie_many, sem.query, sem.nodes, sem.outcome, sem.topics, **kw)
    monkeypatch.setattr(Partners, "BLOCK_FLOATS", 100 * 2 * 7)  # 7 prompts per block
    blocked = quiet(aie_many, sem.query, sem.nodes, sem.outcome, sem.topics, **kw)
    for name in ("value", "pair_ess", "ci_low", "ci_high", "ess"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(whole, name), rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(whole.value)) and np.abs(whole.value).max() > 0.05
