"""The smallest detectable AIE: its floor against the spread of an estimator that attains it, and its wiring."""

import numpy as np
import pytest
import torch

import confounded_patching as cp
from confounded_patching.errors import InputError
from confounded_patching.estimation.detectable import detectable_effect, information, outcome_noise
from confounded_patching.estimation.linalg import canonical_correlation, canonical_correlations
from confounded_patching.estimation.reliability import ReliabilityRule

Z = 1.959964 + 0.841621  # z_{0.975} + z_{0.8}


def _design(rng, m, d=3, noise=0.6, c=0.05):
    """``n = M q + u`` with ``u ~ N(0, s^2 I)``, ``y = q^T C n + (q^2 terms) + N(0, 1)``, C small (a local alternative).
    ``M`` is the same in every call; the data are drawn from ``rng``."""
    M = np.linalg.qr(np.random.default_rng(0).normal(size=(d, d)))[0] * np.array([1.5, 1.0, 0.7])[:d]
    q = rng.normal(size=(m, d))
    u = noise * rng.normal(size=(m, d))
    n = q @ M.T + u
    f = 0.4 * q[:, 0] ** 2 - 0.3 * q[:, 1] * q[:, 2]
    y = c * np.einsum("md,me->m", q, n) + f + rng.normal(size=m)
    return q, n, y, f, M, noise


def test_information_is_the_trace_of_the_node_models_signal_to_noise():
    # in canonical coordinates M = diag(rho), Sigma_u = I - diag(rho^2): tr(M^T Sigma_u^-1 M) = sum rho^2 / (1 - rho^2)
    rho = torch.tensor([[0.9, 0.5, 0.0], [1.0, 0.2, 0.1]], dtype=torch.float64)
    info = information(rho)
    assert info[0].item() == pytest.approx(0.81 / 0.19 + 0.25 / 0.75)
    assert info[1].item() == float("inf")


def test_the_floor_matches_the_spread_of_an_estimator_that_attains_it():
    """Independent reference: the oracle Stein-type moment estimator -mean((y - f) u^T Sigma_u^-1 M (q - mean q)),
    which knows M, Sigma_u and the query's own effect f, over 300 replicates; its sd is the Cramer-Rao floor."""
    rng = np.random.default_rng(3)
    m, reps = 2000, 300
    est = []
    for _ in range(reps):
        q, n, y, f, M, s = _design(rng, m)
        u = n - q @ M.T
        est.append(-np.mean((y - f) * np.einsum("me,ed,md->m", u / s ** 2, M, q - q.mean(0))))
    sd = float(np.std(est))
    q, n, y, f, M, s = _design(rng, m)
    qt, nt, yt = (torch.as_tensor(a) for a in (q, n, y))
    floor = detectable_effect(information(canonical_correlations(qt, nt)), outcome_noise(yt, qt), m).item() / Z
    assert floor == pytest.approx(sd, rel=0.15)
    # the closed form of the design: I = tr(M^T M Sigma_Q) / s^2 (Sigma_Q = I), sigma = 1
    assert floor == pytest.approx(np.sqrt(np.trace(M.T @ M) / s ** 2 / m), rel=0.1)


def test_tables_carry_the_floor_and_it_scales_with_the_outcome(tmp_path):
    rng = np.random.default_rng(4)
    q, n, y, *_ = _design(rng, 800)
    free = rng.normal(size=(800, 3))  # independent of the query: a small floor
    t = cp.aie_many(q, [n, free], y, n_boot=20)
    assert t.detectable.shape == (2,)
    assert np.all(np.isfinite(t.detectable)) and t.detectable[0] > 10 * t.detectable[1]
    rho = canonical_correlations(torch.as_tensor(q), torch.as_tensor(n))
    assert canonical_correlation(torch.as_tensor(q), torch.as_tensor(n))[0].item() == pytest.approx(rho[0, 0].item())
    assert t[0].detectable == t.detectable[0]
    assert "detectable" in t.to_dataframe().columns
    np.testing.assert_array_equal(type(t).load(t.save(tmp_path / "t.npz")).detectable, t.detectable)
    t5 = cp.aie_many(q, [n, free], 5.0 * y, n_boot=20)
    np.testing.assert_allclose(t5.detectable, 5.0 * t.detectable, rtol=1e-6)


def test_max_detectable_flags_nodes_that_cannot_see_an_effect_of_that_size():
    rng = np.random.default_rng(5)
    q, n, y, *_ = _design(rng, 800)
    free = rng.normal(size=(800, 3))
    base = cp.aie_many(q, [n, free], y, n_boot=20)
    cut = float(np.sqrt(base.detectable[0] * base.detectable[1]))  # between the two floors
    rule = ReliabilityRule(max_query_corr=1.0, max_detectable=cut)
    t = cp.aie_many(q, [n, free], y, n_boot=20, reliability=rule)
    assert not t.reliable[0] and "no estimator could tell" in t.reason[0]
    # the figures sit in the parenthesis, so the report's table of reasons counts every such node in one row
    two = cp.aie_many(q, [n, 0.5 * n + 0.5 * free], y, n_boot=20, reliability=ReliabilityRule(max_query_corr=1.0,
                                                                                                max_detectable=0.0))
    assert len({r.split(" (")[0] for r in two.reason}) == 1 and two.detectable[0] != two.detectable[1]
    assert t.reliable[1], t.reason[1]
    assert "no estimator could tell" not in cp.aie_many(q, [n, free], y, n_boot=20,
                                                       reliability=ReliabilityRule(max_query_corr=1.0)).reason[0]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "0.1"])
def test_reliability_rule_refuses_bad_thresholds(bad):
    with pytest.raises(InputError, match="max_detectable"):
        ReliabilityRule(max_detectable=bad)
    with pytest.raises(InputError, match="max_query_corr"):
        ReliabilityRule(max_query_corr=bad)


def test_no_floor_without_variation_and_an_enormous_one_for_a_copy_of_the_query():
    rng = np.random.default_rng(6)
    q, y = rng.normal(size=(600, 3)), rng.normal(size=600)
    with pytest.warns(UserWarning, match="not identified"):
        t = cp.aie_many(q, [np.zeros((600, 2)), q @ np.ones((3, 2)), rng.normal(size=(600, 2))], y, n_boot=10)
    assert np.isnan(t.detectable[0])  # a constant node: nothing to swap
    assert t.detectable[1] > 1e3 * t.detectable[2]  # a linear function of the query: nothing the query leaves free


def test_the_hover_text_gives_the_floor():
    from confounded_patching.plot.frames import hover_text

    row = {"node": "MLP3@-1", "value": 0.01, "detectable": 0.42, "reason": "node nearly determined by the query"}
    assert "smallest AIE any estimator could tell from 0 here: 0.420" in hover_text(row, "EB-AIE adjusted")
    assert "could tell" not in hover_text({"node": "MLP3@-1", "value": 0.01}, "EB-AIE adjusted")
