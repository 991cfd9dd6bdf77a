"""K-means topics, one-hot labels and the confounder's feature matrix."""

from __future__ import annotations

import numpy as np
import pytest

from confounded_patching import InputError
from confounded_patching.estimation.confounders import confounder_features, kmeans_topics, one_hot
from simulations import clusters


def test_kmeans_recovers_separated_topics_and_is_seeded():
    x, labels = clusters()
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
    with pytest.raises(InputError, match="confounder must contain at least 2 distinct topics; received 1"):
        confounder_features(np.array(["a", "a", "a"]), 3)
    with pytest.raises(InputError, match="confounder must not contain None or NaN"):
        confounder_features(np.array(["a", None, "b"], dtype=object), 3)
    with pytest.raises(InputError, match=r"confounder must be finite"):
        confounder_features(np.array([[0.1], [np.nan], [0.3]]), 3)
    with pytest.raises(InputError, match=r"confounder covariates must not be constant"):
        confounder_features(np.ones((4, 1)), 4, kind="covariates")
    with pytest.raises(InputError, match=r"confounder_kind must be one of"):
        confounder_features(np.ones(4), 4, kind="topics")
