"""The augmented (outcome-model) AIE: its ridge fit against closed-form references, and planted truth.

The ridge of :mod:`confounded_patching.estimation.outcome_model` is checked against a
direct numpy solve of the normal equations at its stated penalties (the
products at ``ALPHA`` times the ``q outer n`` columns' mean centred sum of
squares, the additive columns free), the shared factorization against
separate fits, and the partner averages against a loop by hand. The
augmented estimator is checked against planted truth in the designs where
the balancing-only estimator is known to shrink toward 0
(``docs/estimator.md``): d = 5 and a strong d = 2 node.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from confounded_patching import InputError
from confounded_patching.estimation import simulate as S
from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.outcome_model import ALPHA, fit_outcome, fit_outcomes, outcome_features, ridge


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _reference_ridge(F, y, alpha):
    Fc, yc = F - F.mean(0), y - y.mean()
    return np.linalg.solve(Fc.T @ Fc + alpha * np.eye(F.shape[1]), Fc.T @ yc)


@pytest.mark.parametrize("m, p, n_free", [(120, 30, 6), (40, 90, 10), (200, 12, 0)])
def test_ridge_equals_the_normal_equations_at_the_stated_penalty(m, p, n_free):
    rng = np.random.default_rng(0)
    F = rng.normal(size=(2, m, p)) * rng.uniform(0.5, 2, size=p)
    y = F[0, :, :5] @ rng.normal(size=5) + rng.normal(size=m)
    penalized = torch.arange(p) >= n_free
    scale_cols = torch.arange(p) >= p - 4
    beta, b0, alpha, _ = ridge(torch.from_numpy(F), torch.from_numpy(y), penalized, scale_cols)
    for b in range(2):
        Fc = F[b] - F[b].mean(0)
        assert float(alpha[b]) == pytest.approx(ALPHA * np.mean((Fc[:, -4:] ** 2).sum(0)), rel=1e-10)
        penalty = np.where(penalized.numpy(), 1.0, 1e-8) * float(alpha[b])  # the unpenalized columns are free
        ref = np.linalg.solve(Fc.T @ Fc + np.diag(penalty), Fc.T @ (y - y.mean()))
        np.testing.assert_allclose(beta[b].numpy(), ref, rtol=1e-7, atol=1e-9)
        pred = F[b] @ beta[b].numpy() + float(b0[b])
        np.testing.assert_allclose(pred, Fc @ ref + y.mean(), rtol=1e-7, atol=1e-9)


def test_unpenalized_additive_columns_keep_an_additive_signal_out_of_the_products():
    # y depends on a square only; the product column is correlated with it. With the square free, the
    # product's coefficient stays near 0; penalizing everything alike moves signal into the product.
    rng = np.random.default_rng(2)
    m = 400
    a = rng.normal(size=m)
    b = 0.9 * a + 0.45 * rng.normal(size=m)
    F = torch.from_numpy(np.stack([a ** 2, a * b], 1)[None])
    y = torch.from_numpy(3 * a ** 2 + 0.1 * rng.normal(size=m))
    product = torch.tensor([False, True])
    free_beta = ridge(F, y, product, product, alpha=0.5)[0]
    all_beta = ridge(F, y, torch.tensor([True, True]), product, alpha=0.5)[0]
    assert abs(float(free_beta[0, 1])) < 0.05
    assert abs(float(all_beta[0, 1])) > 0.3


def _problem(*, seed, m, K, d_q, n_nodes):
    """Query [m, d_q], nodes [n_nodes, m, 2], two topic dummies [m, 2], noise [m] and partners [m, K]."""
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(rng.normal(size=(m, d_q)))
    n = torch.from_numpy(rng.normal(size=(n_nodes, m, 2)))
    x = torch.from_numpy(np.eye(3)[rng.integers(0, 3, m)][:, 1:])
    e = torch.from_numpy(rng.normal(size=m))
    J = torch.from_numpy(np.stack([rng.choice(np.delete(np.arange(m), i), K, replace=False) for i in range(m)]))
    return q, n, x, e, J


def test_unadjusted_model_from_the_shared_factorization_equals_its_own_fit():
    q, n, x, e, J = _problem(seed=3, m=150, K=9, d_q=3, n_nodes=2)
    y = e + q[:, 0] * n[0, :, 1] + x[:, 0]
    (h_adj, P_adj), (h_un, P_un) = fit_outcomes(q, n, [x, None], y, J)
    h_alone, P_alone = fit_outcome(q, n, None, y, J)
    np.testing.assert_allclose(h_un.numpy(), h_alone.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(P_un.numpy(), P_alone.numpy(), rtol=1e-9, atol=1e-10)
    h_x, P_x = fit_outcome(q, n, x, y, J)
    np.testing.assert_allclose(h_adj.numpy(), h_x.numpy(), rtol=1e-9, atol=1e-10)
    assert not np.allclose(h_adj.numpy(), h_un.numpy())  # the confounder's columns do enter the adjusted model


def test_partner_averages_are_the_fitted_outcome_averaged_over_partners():
    q, n, x, e, J = _problem(seed=1, m=80, K=7, d_q=2, n_nodes=1)
    m = q.shape[0]
    y = e + q[:, 0] * n[0, :, 1]
    h, P = fit_outcome(q, n, x, y, J)
    F = outcome_features(q, q * q, n, x)[0].numpy()
    beta, *_ = np.linalg.lstsq(np.c_[np.ones(m), F], h[0].numpy(), rcond=None)  # h is linear in the features
    by_hand = np.array([np.mean([np.r_[1, outcome_features(q[j:j + 1], q[j:j + 1] ** 2, n[:, i:i + 1], x[i:i + 1])[0, 0]
                                       .numpy()] @ beta for j in J[i].tolist()]) for i in range(m)])
    np.testing.assert_allclose(P[0].numpy(), by_hand, rtol=1e-8, atol=1e-8)


def _fit(sim, seed, **kw):
    d = sim.query.shape[1]
    confounder = kw.pop("confounder", sim.topics)
    return _quiet(aie_many, sim.query, sim.nodes, sim.outcome, confounder, d_q=d, d_n=d, K=100, n_boot=0, seed=seed,
                  dtype=torch.float64, **kw)


def test_augmented_aie_recovers_a_high_dimensional_causal_node_that_balancing_alone_shrinks():
    sim = S.gaussian_sem(m=1000, d_q=5, d_n=5, strength=0.5, confounding=0.5, seed=300)
    aug = _fit(sim, 300)
    plain = _fit(sim, 300, augment=False)
    truth = sim.truth[0]
    assert aug.augmented and not plain.augmented
    assert abs(aug.value[0] - truth) < 0.2 * abs(truth)  # measured: -1.19 vs -1.31 (mean of 3 seeds)
    assert abs(plain.value[0] - truth) > 0.3 * abs(truth)  # balancing alone: about half the truth
    assert abs(aug.value[1]) < 0.15  # the topic-only node stays near 0


def test_augmented_adjusted_zeroes_the_topic_only_node_and_the_augmented_unadjusted_does_not():
    sims = [S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=1.0, confounding=0.5, seed=s) for s in (300, 301)]
    adj = np.mean([_fit(sim, s).value[1] for sim, s in zip(sims, (300, 301))])
    unadj = np.mean([_fit(sim, s, confounder=None).value[1] for sim, s in zip(sims, (300, 301))])
    assert abs(adj) < 0.1  # measured -0.04 (3 seeds)
    assert abs(unadj) > 2 * abs(adj) + 0.1  # measured -0.43: the topic makes the node look causal


def test_augmented_additive_outcome_stays_near_zero():
    sim = S.additive(m=2000, d_q=2, d_n=2, confounding=0.5, seed=301)
    assert np.all(np.abs(_fit(sim, 301).value) < 0.15)


def test_augment_with_ht_is_rejected():
    sim = S.gaussian_sem(m=200, seed=0)
    with pytest.raises(InputError, match="augment=True applies to estimator='hajek'"):
        aie_many(sim.query, sim.nodes, sim.outcome, sim.topics, estimator="ht", augment=True, n_boot=0)
    with pytest.raises(InputError, match="augment must be"):
        aie_many(sim.query, sim.nodes, sim.outcome, sim.topics, augment="yes", n_boot=0)


def test_exactly_collinear_free_columns_still_give_a_finite_fit():
    # two identical, huge additive columns: the factorization with the tiny free penalty fails in float64 and
    # the penalty is raised for that node only; the other node of the batch keeps its own fit
    rng = np.random.default_rng(4)
    m = 300
    u = rng.normal(size=m) * 1e8
    prod = rng.normal(size=m)
    y = prod + 1e-8 * u + 0.1 * rng.normal(size=m)
    F = np.stack([np.stack([u, u, prod], 1), np.stack([rng.normal(size=m), u, prod], 1)])
    beta, b0, _, L = ridge(torch.from_numpy(F), torch.from_numpy(y), torch.tensor([False, False, True]),
                            torch.tensor([False, False, True]))
    assert torch.isfinite(beta).all() and torch.isfinite(L).all()
    pred = np.einsum("bmp,bp->bm", F, beta.numpy()) + b0.numpy()[:, None]
    assert np.corrcoef(pred[0], y)[0, 1] > 0.99 and np.corrcoef(pred[1], y)[0, 1] > 0.99
