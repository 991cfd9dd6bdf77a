"""PCA (exact and randomized, batched) and standardization."""

from __future__ import annotations

import numpy as np
import torch

from confounded_patching.estimation.linalg import pca, standardize
from simulations import clusters


def test_pca_components_are_centred_unit_variance_and_uncorrelated():
    x, _ = clusters()
    p = pca(x, d=5)
    assert p.shape == (300, 5)
    np.testing.assert_allclose(p.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(p.std(0), 1, atol=1e-10)
    np.testing.assert_allclose(np.corrcoef(p.T), np.eye(5), atol=1e-8)


def test_randomized_pca_spans_the_exact_leading_subspace():
    rng = np.random.default_rng(1)
    low = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 120)) * 3
    x = low + 0.1 * rng.normal(size=(500, 120))
    fast, exact = pca(x, d=4, exact=False), pca(x, d=4, exact=True)
    # same subspace: regressing one on the other explains everything
    coef, *_ = np.linalg.lstsq(exact, fast, rcond=None)
    np.testing.assert_allclose(exact @ coef, fast, atol=1e-6)


def test_batched_pca_equals_one_by_one_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    xs = torch.tensor(rng.normal(size=(3, 200, 60)))
    state = torch.get_rng_state()
    batch = pca(xs, d=5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    for b in range(3):
        torch.testing.assert_close(batch[b], pca(xs[b], d=5, seed=7))


def test_pca_wider_than_data_standardizes_and_zeroes_constant_columns():
    x = np.c_[np.arange(10.0), np.full(10, 3.0)]
    out = pca(x, d=25)
    assert out.shape == (10, 2)
    np.testing.assert_allclose(out[:, 1], 0)
    np.testing.assert_allclose(out[:, 0].std(), 1)


def test_standardize_does_not_touch_its_input():
    x = np.random.default_rng(3).normal(size=(20, 3)) * 5 + 2
    x0 = x.copy()
    s = standardize(x)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_allclose(s.mean(0), 0, atol=1e-12)
