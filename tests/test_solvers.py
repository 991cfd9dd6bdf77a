"""The solvers of entropy balancing against independent ones, their certificates and their statuses."""

from __future__ import annotations

import numpy as np
import pytest

from balance import design, node_batch, scipy_reference
from confounded_patching.estimation.balancer import EntropyBalancer
from confounded_patching.estimation.features import balance_features, block_gamma


def test_exact_balance_equals_empirical_calibration_entropy_weights():
    ec = pytest.importorskip("empirical_calibration")
    G = balance_features(*design())
    eb = EntropyBalancer(gamma=0.0).fit(G)
    w_ref, ok = ec.calibrate(G, np.zeros((1, G.shape[1])), objective=ec.Objective.ENTROPY)
    assert ok
    assert eb.status_ == "converged"
    np.testing.assert_allclose(eb.weights_, w_ref, atol=1e-6 / G.shape[0], rtol=1e-6)
    assert eb.imbalance_ <= 1e-8


def test_exact_balance_gradient_reaches_1e_8():
    G = balance_features(*design(m=500, d_q=3, d_z=4, seed=3))
    eb = EntropyBalancer(gamma=0.0, tol=1e-8).fit(G)
    assert eb.status_ == "converged"
    assert np.abs(G.T @ eb.weights_).max() <= 1e-8


@pytest.mark.parametrize("solver", ["newton", "fista"])
@pytest.mark.parametrize("gamma", [0.02, 0.05, 0.15])
def test_approximate_balance_matches_scipy_and_satisfies_kkt(gamma, solver):
    G = balance_features(*design(seed=1))
    gam = np.full(G.shape[1], gamma)
    eb = EntropyBalancer(gamma=gamma, tol=1e-10, solver=solver).fit(G)
    lam_ref, w_ref, f_ref = scipy_reference(G, gam)
    assert eb.status_ == "converged"
    np.testing.assert_allclose(eb.weights_, w_ref, atol=1e-7 / G.shape[0], rtol=1e-6)
    s = -G @ eb.lambda_
    f = s.max() + np.log(np.exp(s - s.max()).sum()) + gam @ np.abs(eb.lambda_)
    assert f <= f_ref + 1e-10
    # KKT: |G^T w| <= gamma everywhere, = gamma * sign(lam) where lam != 0
    mom = G.T @ eb.weights_
    assert np.all(np.abs(mom) <= gam + 1e-9)
    on = eb.lambda_ != 0
    np.testing.assert_allclose(mom[on], gam[on] * np.sign(eb.lambda_[on]), atol=1e-9)
    assert abs(eb.gap_) <= 1e-8
    assert eb.violation_ <= 1e-9


def test_infeasible_exact_balance_is_reported_not_returned_as_weights():
    G = balance_features(*design())
    G_bad = np.c_[G, 1.0 + np.abs(G[:, 0])]  # a column that no weights can centre
    eb = EntropyBalancer(gamma=0.0).fit(G_bad)
    assert eb.status_ == "infeasible"
    assert not eb.converged_


def test_infeasible_approximate_balance_is_detected_by_the_dual_certificate():
    G = balance_features(*design())
    G_bad = np.c_[G, G[:, 0] + 0.5, -G[:, 0] + 0.5]  # means of these two columns sum to 1 under any weights
    eb = EntropyBalancer(gamma=0.1).fit(G_bad)
    assert eb.status_ == "infeasible"
    eb_ok = EntropyBalancer(gamma=0.6).fit(G_bad)  # |a| <= 0.6 and |1 - a| <= 0.6 is feasible
    assert eb_ok.status_ == "converged"


def test_every_infeasible_status_carries_a_certificate_in_float64():
    """Newton reports infeasibility from its step's direction; the returned lambda then certifies it itself."""
    rng = np.random.default_rng(7)
    G = balance_features(*design(seed=7))
    shifts = np.array([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])  # larger shifts of one column: more of the batch infeasible
    Gs = np.stack([np.c_[G, G[:, 0] * 0.5 + s + 0.1 * rng.normal(size=G.shape[0])] for s in shifts])
    gam = np.full(Gs.shape[-1], 0.3)
    for solver in ("newton", "fista"):
        eb = EntropyBalancer(gamma=gam, tol=1e-8, solver=solver).fit(Gs)
        statuses = list(eb.status_)
        assert "infeasible" in statuses and "converged" in statuses
        for b, status in enumerate(statuses):
            lam = eb.lambda_[b]
            margin = (Gs[b] @ lam).min() - gam @ np.abs(lam)
            assert (margin > 0) == (status == "infeasible"), (solver, b, status, margin)
    newton = EntropyBalancer(gamma=gam, tol=1e-8).fit(Gs)
    fista = EntropyBalancer(gamma=gam, tol=1e-8, solver="fista").fit(Gs)
    assert newton.status_ == fista.status_


def test_newton_and_fista_agree_on_a_batch_of_factored_problems():
    q, _ = design(m=400, d_q=3)
    zs = node_batch(q, 4, coef=0.5, seed=8)
    gam = block_gamma(3, 4, product=0.06)
    newton = EntropyBalancer(gamma=gam, tol=1e-9).fit_factored(q, zs)
    fista = EntropyBalancer(gamma=gam, tol=1e-9, solver="fista").fit_factored(q, zs)
    assert newton.status_ == fista.status_ == ["converged"] * 4
    np.testing.assert_allclose(newton.weights_, fista.weights_, atol=1e-8)
    assert newton.n_iter_.max() < 30 < fista.n_iter_.min()  # Newton steps against first-order iterations


def test_max_iter_status_when_the_cap_is_hit():
    G = balance_features(*design())
    eb = EntropyBalancer(gamma=0.01, max_iter=3, tol=1e-12).fit(G)
    assert eb.status_ == "max_iter"
    assert eb.n_iter_ == 3
