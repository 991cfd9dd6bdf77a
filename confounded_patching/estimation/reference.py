"""A plain reference EB-AIE: the paper's estimator with nothing added, written independently of the engine.

Fotouhi et al. (arXiv 2412.02893), Eq. (2), as directly as it can be written:

1. ``q`` (and each node ``n``, the confounder ``x``) centred and scaled;
   ``g(q, z) = [q, q^2, z, q outer z]``, every column divided by its
   standard deviation (the marginal columns also centred, the products not:
   their target is 0), so the tolerance ``gamma`` is in standardized units;
2. entropy-balancing weights on ``G`` with ``|(G^T w)_k| <= gamma`` for every
   column: ``pi_x`` on ``g(q, x)``, ``pi_nx`` on ``g(q, [n, x])`` per node
   (``pi_n`` on ``g(q, n)`` when unadjusted);
3. Horvitz-Thompson over ``K`` random partners ``j != i``:
   ``T_ij = pi_x,i (R^nx_ij R^x_ij - 1) y_i``, the scores' log-linear model
   evaluated at the partner's query, ``T`` winsorized at its ``p`` and
   ``1 - p`` quantiles (5% by default), ``AIE = mean T``.

No gamma path, no calibration, no outcome model. It is what the default
estimator (:mod:`~.aie`) is compared against on planted truths
(``benchmarks/studies/family.py``); a default that loses to it is a wrong
default. ``reference_aie`` returns plain arrays, not a result object.

Example::

    >>> out = reference_aie(q, [n1, n2], y, topics, gamma=0.1)
    >>> out["value"], out["status"]
"""

from __future__ import annotations

import numpy as np
import torch

from .balancer import EntropyBalancer
from .confounders import confounder_features
from .linalg import canonical_correlation, pca
from .partners import pair_index
from .reliability import ReliabilityRule, assess

__all__ = ["reference_aie"]


def _std(t: torch.Tensor) -> torch.Tensor:
    sd = t.std(0, unbiased=False)
    return (t - t.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))


class _Features:
    """``g(q, z)`` with fixed column shifts and scales (those of the sample), evaluable at any ``(q', z)``."""

    def __init__(self, q: torch.Tensor, z: torch.Tensor | None, squares):
        self.squares = squares
        self.iu = torch.triu_indices(q.shape[1], q.shape[1]) if squares == "quadratic" else None
        self.c2 = self._sq(q).mean(0)
        raw = self.raw(q, z)
        sd = raw.std(0, unbiased=False)
        self.scale = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        self.G = raw / self.scale

    def _sq(self, q):
        if self.iu is None:
            return q * q
        return (q.unsqueeze(-1) * q.unsqueeze(-2))[..., self.iu[0], self.iu[1]]

    def raw(self, q, z):
        cols = [q]
        if self.squares:
            cols.append(self._sq(q) - self.c2)
        if z is not None:
            cols += [z, (q.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)]
        return torch.cat(cols, -1)

    def score(self, lam, q, z):
        """``-lam^T g(q, z)`` (standardized) for rows of ``q``, ``z`` (broadcast over leading axes)."""
        return -(self.raw(q, z) / self.scale) @ lam


def _fit(G: torch.Tensor, gamma):
    eb = EntropyBalancer(gamma, tol=1e-7, max_iter=500, dtype=torch.float64, warn=False).fit(G)
    return eb.lambda_, eb.weights_, eb.status_, float(eb.ess_)


def reference_aie(query, nodes, outcome, confounder=None, *, gamma: float = 0.1, K: int = 200,
                  winsorize: float = 0.05, squares: bool = True, d_q: int = 25, d_n: int = 25, n_boot: int = 200,
                  ci: float = 0.95, seed: int = 0, marginal_gamma: float | None = None, hajek: bool = False,
                  reliability: ReliabilityRule | None = None) -> dict:
    """The plain EB-AIE of every node (see the module docstring).

    Args:
        query: ``[m, D_q]``; nodes: a list of ``[m, D]`` or ``[n_nodes, m, D]``;
            outcome: ``[m]``; confounder: labels ``[m]``, covariates ``[m, k]`` or None.
        gamma: tolerance on every standardized column of ``g``.
        K: partners per prompt; winsorize: quantile of the clipping (0: none).
        squares: include ``q^2`` in ``g``; d_q, d_n: PCA dimensions.
        n_boot, ci: bootstrap over prompts (weights held fixed).
        marginal_gamma: tolerance of the columns other than the products (default: ``gamma``).
        hajek: the self-normalised form instead of HT (no interval).
        reliability: the thresholds of the ``reliable`` flag (:mod:`~.reliability`; no pair-ESS check here).

    Returns:
        dict of numpy arrays per node: ``value``, ``ci_low``, ``ci_high``, ``se``, ``ess``, ``query_corr``,
        ``reliable``, and lists ``status`` and ``reason``, plus ``status_x`` and ``ess_x``.
    """
    y = torch.as_tensor(np.asarray(outcome, dtype=np.float64))
    m = y.shape[0]
    q = torch.as_tensor(np.asarray(query, dtype=np.float64))
    q = pca(q, d_q, seed=seed) if q.shape[1] > d_q else _std(q)
    xs, _ = confounder_features(confounder, m)
    x = None if xs is None else torch.as_tensor(xs)
    J = torch.from_numpy(pair_index(m, K, seed))
    qj = q[J]  # [m, K, d_q]
    log_pi_x = torch.zeros(m, dtype=torch.float64)
    dx = torch.zeros(m, J.shape[1], dtype=torch.float64)
    status_x, ess_x = "none", float("nan")
    if x is not None:
        fx = _Features(q, x, squares)
        lam, w, status_x, ess_x = _fit(fx.G, gamma)
        log_pi_x = torch.log(torch.as_tensor(w).clamp_min(1e-300)) + np.log(m)
        s_i = fx.score(lam, q, x)
        s_j = fx.score(lam, qj, x[:, None, :].expand(-1, J.shape[1], -1))
        dx = s_j - s_i[:, None]  # log R^x_ij = s_x(q_j, x_i) - s_x(q_i, x_i)
    counts = torch.from_numpy(np.random.default_rng([seed, 1]).multinomial(
        m, np.full(m, 1.0 / m), size=n_boot)).to(torch.float64)
    items = [torch.as_tensor(np.asarray(n, dtype=np.float64)) for n in nodes]
    out = {k: [] for k in ("value", "ci_low", "ci_high", "se", "ess", "status", "query_corr")}
    for raw in items:
        raw = raw[:, None] if raw.ndim == 1 else raw
        n = pca(raw, d_n, seed=seed) if raw.shape[1] > d_n else _std(raw)
        z = n if x is None else torch.cat([n, x], 1)
        out["query_corr"].append(float(canonical_correlation(q, n, x)[0]))
        fz = _Features(q, z, squares)
        gam = gamma
        if marginal_gamma is not None:
            gam = torch.full((fz.G.shape[1],), float(gamma), dtype=torch.float64)
            gam[: fz.G.shape[1] - q.shape[1] * z.shape[1]] = marginal_gamma
        lam, _, status, ess = _fit(fz.G, gam)
        out["status"].append(status)
        out["ess"].append(ess)
        if status == "infeasible":
            for k in ("value", "ci_low", "ci_high", "se"):
                out[k].append(float("nan"))
            continue
        s_i = fz.score(lam, q, z)
        s_j = fz.score(lam, qj, z[:, None, :].expand(-1, J.shape[1], -1))
        log_rnx = s_i[:, None] - s_j  # log R^nx_ij = s_nx(q_i, z_i) - s_nx(q_j, z_i)
        logw = (log_pi_x[:, None] + log_rnx + dx).clamp(max=700.0)
        T = (torch.exp(logw) - torch.exp(log_pi_x)[:, None]) * y[:, None]
        if hajek:
            W = torch.exp(logw).sum(1)
            pi = torch.exp(log_pi_x)
            value = float((W @ y) / W.sum() - (pi @ y) / pi.sum())
            out["value"].append(value)
            for k in ("ci_low", "ci_high", "se"):
                out[k].append(float("nan"))
            continue
        if winsorize:
            lo, hi = torch.quantile(T.flatten(), torch.tensor([winsorize, 1 - winsorize], dtype=T.dtype))
            T = T.clamp(lo, hi)
        rows = T.mean(1)
        value = float(rows.mean())
        boot = (counts @ rows) / m
        alpha = (1 - ci) / 2
        out["value"].append(value)
        out["ci_low"].append(float(torch.quantile(boot, alpha)) if n_boot else float("nan"))
        out["ci_high"].append(float(torch.quantile(boot, 1 - alpha)) if n_boot else float("nan"))
        out["se"].append(float(boot.std()) if n_boot > 1 else float("nan"))
    res = {k: (v if k == "status" else np.asarray(v)) for k, v in out.items()}
    res.update(status_x=status_x, ess_x=ess_x)
    reliable, reason = assess(res["status"], res["query_corr"], np.full(len(items), np.nan), ess_x, m, x is not None,
                              reliability)
    res.update(reliable=reliable & np.isfinite(res["value"]), reason=reason)
    return res
