"""PCA, standardization, k-means topics and confounder matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from confounded_patching import InputError
from confounded_patching.estimation.confounders import confounder_features, kmeans_topics, one_hot
from confounded_patching.estimation.linalg import pca, standardize


def _clusters(m=300, D=40, k=3, sep=5.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), m // k)
    centres = np.eye(k, D) * sep
    return centres[labels] + rng.normal(size=(m, D)), labels


def test_pca_components_are_centred_unit_variance_and_uncorrelated():
    x, _ = _clusters()
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


def test_kmeans_recovers_separated_topics_and_is_seeded():
    x, labels = _clusters()
    found = kmeans_topics(x, k=3, seed=0)
    # same partition up to relabelling
    pairs = {(a, b) for a, b in zip(labels, found)}
    assert len(pairs) == 3
    np.testing.assert_array_equal(found, kmeans_topics(x, k=3, seed=0))


def test_kmeans_rejects_too_few_distinct_rows():
    with pytest.raises(InputError, match=r"x must have at least k = 3 distinct rows to form 3 topics; received 2"):
        kmeans_topics(np.r_[np.zeros((5, 2)), np.ones((5, 2))], k=3)


def test_one_hot_drops_the_first_category_for_strings_and_ints():
    X, names = one_hot(np.array(["sports", "politics", "sports", "art"]))
    assert names == ["politics", "sports"]
    np.testing.assert_array_equal(X, [[0, 1], [1, 0], [0, 1], [0, 0]])
    X2, names2 = one_hot([2, 0, 2])
    assert names2 == ["2"] and X2[:, 0].tolist() == [1, 0, 1]


def test_confounder_features_labels_and_covariates():
    X, names = confounder_features(np.array([0, 1, 2, 1, 0, 2]), 6)
    assert X.shape == (6, 2) and names == ["1", "2"]
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    C, cnames = confounder_features(np.random.default_rng(4).normal(size=(6, 2)), 6)
    assert C.shape == (6, 2) and cnames == ["x0", "x1"]
    assert confounder_features(None, 6) == (None, [])


def test_confounder_errors_name_the_problem():
    with pytest.raises(InputError, match="labels must contain at least 2 distinct topics; received 1"):
        confounder_features(np.array(["a", "a", "a"]), 3)
    with pytest.raises(InputError, match="labels must not contain None or NaN"):
        confounder_features(np.array(["a", None, "b"], dtype=object), 3)
    with pytest.raises(InputError, match=r"confounder must be finite"):
        confounder_features(np.array([[0.1], [np.nan], [0.3]]), 3)
    with pytest.raises(InputError, match=r"confounder covariates must not be constant"):
        confounder_features(np.ones((4, 1)), 4, kind="covariates")
    with pytest.raises(InputError, match=r"confounder_kind must be one of"):
        confounder_features(np.ones(4), 4, kind="topics")
