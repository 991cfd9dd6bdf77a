"""The balance features g(q, z): the factored operator equals the dense features; products are not re-centred."""

from __future__ import annotations

import numpy as np
import pytest

from balance import design
from confounded_patching import InputError
from confounded_patching.estimation.balancer import EntropyBalancer
from confounded_patching.estimation.features import balance_features, block_gamma, feature_layout


def test_factored_form_equals_dense_features():
    q, z = design(m=400, d_q=3, d_z=4, seed=4)
    gam = block_gamma(3, 4, product=0.04)
    dense = EntropyBalancer(gamma=gam, tol=1e-10).fit(balance_features(q, z))
    fact = EntropyBalancer(gamma=gam, tol=1e-10).fit_factored(q, z)
    np.testing.assert_allclose(fact.weights_, dense.weights_, atol=1e-10)
    np.testing.assert_allclose(fact.lambda_, dense.lambda_, atol=1e-6)


def test_factored_paper_features_have_no_squares():
    q, z = design(m=300, d_q=2, d_z=2)
    G = balance_features(q, z, squares=False)
    assert G.shape[1] == 2 + 2 + 4
    fact = EntropyBalancer(gamma=0.0).fit_factored(q, z, squares=False)
    dense = EntropyBalancer(gamma=0.0).fit(G)
    np.testing.assert_allclose(fact.weights_, dense.weights_, atol=1e-10)


def test_product_columns_are_not_recentred():
    q, z = design(m=200, d_q=1, d_z=1, dependence=0.8)
    G = balance_features(q, z)
    lay = feature_layout(1, 1)
    qs, zs = (q - q.mean()) / q.std(), (z - z.mean()) / z.std()
    np.testing.assert_allclose(G[:, lay["qz"]][:, 0], (qs * zs)[:, 0])
    assert abs(G[:, lay["qz"]].mean()) > 0.3  # the observed correlation stays to be balanced away
    assert abs(G[:, lay["q2"]].mean()) < 1e-12  # squares are centred (their target is the sample mean)


def test_constant_covariate_is_rejected_by_balance_features():
    q, z = design(m=50)
    z[:, 1] = 3.0
    with pytest.raises(InputError, match=r"z must have non-constant columns; received constant column\(s\) \[1\]"):
        balance_features(q, z)
