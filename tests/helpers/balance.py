"""Small balancing problems shared by the tests of the features, the solvers and EntropyBalancer."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

from confounded_patching.estimation.features import block_gamma


def design(m=300, d_q=2, d_z=3, seed=0, dependence=0.5):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(m, d_q))
    z = dependence * q[:, :1] + rng.normal(size=(m, d_z))
    return q, z


def node_batch(q, n_nodes, *, coef, seed, d_z=4):
    """``n_nodes`` node designs ``[n_nodes, m, d_z]``, each depending on the first two query columns."""
    rng = np.random.default_rng(seed)
    m = q.shape[0]
    return np.stack([coef * q[:, :2] @ rng.normal(size=(2, d_z)) + rng.normal(size=(m, d_z)) for _ in range(n_nodes)])


def scipy_reference(G: np.ndarray, gamma: np.ndarray):
    """L-BFGS-B on the split lam = lam_plus - lam_minus >= 0 (smooth, bound-constrained)."""
    p = G.shape[1]

    def fun(v):
        lam = v[:p] - v[p:]
        s = -G @ lam
        top = s.max()
        e = np.exp(s - top)
        Z = e.sum()
        w = e / Z
        grad = -G.T @ w
        f = top + np.log(Z) + gamma @ (v[:p] + v[p:])
        return f, np.concatenate([grad + gamma, -grad + gamma])

    res = scipy.optimize.minimize(fun, np.zeros(2 * p), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * p),
                                  options=dict(ftol=1e-15, gtol=1e-12, maxiter=20000))
    lam = res.x[:p] - res.x[p:]
    s = -G @ lam
    w = np.exp(s - s.max())
    return lam, w / w.sum(), res.fun


def batch(m=500, d_q=4, B=3, seed=6):
    q, _ = design(m=m, d_q=d_q)
    rng = np.random.default_rng(seed)
    zs = np.stack([0.3 * q @ rng.normal(size=(d_q, 5)) + rng.normal(size=(m, 5)) for _ in range(B)])
    return torch.tensor(q), torch.tensor(zs), torch.tensor(block_gamma(d_q, 5, product=0.08))
