"""The outcome model of the augmented (doubly robust) AIE: a ridge regression on the balance features.

Entropy-balancing weights that balanced every product column ``q outer n``
exactly would make the weighted mean of any outcome linear in those columns
equal its mean under independence of ``q`` and ``(n, x)``: the weighted
estimator would be unbiased for such outcomes whatever the weights' other
errors (Zhao & Percival 2017). Approximate balance (``gamma > 0``) leaves a
residual imbalance ``delta`` of the products, and the estimate then misses
``beta^T delta``, where ``beta`` are the outcome's coefficients on them: the
shrinkage toward 0 of ``docs/estimator.md``. The augmented estimator
(approximate residual balancing, Athey, Imbens & Wager 2018) fits ``beta``
by ridge regression and adds that term back::

    AIE_aug = AIE_hajek + [ P - sum_i W_i h_i / sum_i W_i ]
    P       = sum_i pi_x,i mean_k h(q_J[i,k], n_i, x_i) / sum_i pi_x,i

where ``h`` is the fitted outcome, ``W`` the estimator's (calibrated) pair
totals and ``P`` the fitted outcome's mean under the estimand's
distribution (the query of a random partner, the node and topic of prompt
``i``). If the outcome is linear in the features, ``AIE_aug`` is unbiased
for any weights with a converged balance; if the weights are right, the
outcome model's errors cancel in expectation (double robustness).

Features ``phi(q, n, x) = [q, q^2, n, n^2, x, q outer n, q outer x]`` with
``q`` and ``n`` the estimator's centred, scaled coordinates; the ridge
penalty is chosen per node by generalised cross-validation over a grid.
All features but the products are linear in ``q``'s partner, so the
partner average ``mean_k h(q_J[i,k], ...)`` is exact from the partners'
mean ``q`` and mean ``q^2``.
"""

from __future__ import annotations

import torch

__all__ = ["fit_outcome", "partner_means"]

_ALPHAS = torch.logspace(-3, 4, 15, dtype=torch.float64)  # penalty grid, in units of the mean feature variance


def _features(q, q2, n, x):
    """``[q, q^2, n, n^2, x, q outer n, q outer x]``: [B, m, p] from q, q2 [m, d_q], n [B, m, d_n], x [m, k].

    ``q`` and ``q2`` may be per-prompt averages over partners (then ``q2`` is the mean of the squares).
    """
    B, m, _ = n.shape
    parts = [q.expand(B, -1, -1), q2.expand(B, -1, -1), n, n * n]
    prods = [(q[None, :, :, None] * n[:, :, None, :]).reshape(B, m, -1)]
    if x is not None:
        parts.append(x.expand(B, -1, -1))
        prods.append((q[:, :, None] * x[:, None, :]).reshape(m, -1).expand(B, -1, -1))
    return torch.cat(parts + prods, -1)


def _ridge_gcv(F, y):
    """Ridge of ``y`` [m] on the columns of ``F`` [B, m, p] (intercept free), penalty by GCV per problem.

    Returns the coefficients [B, p], the intercept [B] and the chosen penalty [B].
    """
    B, m, p = F.shape
    mu = F.mean(1, keepdim=True)
    Fc = F - mu
    yc = y - y.mean()
    primal = p <= m
    if primal:  # eigen-decompose F^T F
        S, V = torch.linalg.eigh(Fc.transpose(1, 2) @ Fc)  # [B, p], [B, p, p]
        Fy = torch.einsum("bmp,m->bp", Fc, yc)  # F^T y first: m p per problem, not m p^2
        r = torch.einsum("bpk,bp->bk", V, Fy)  # V^T F^T y
    else:  # eigen-decompose F F^T
        S, U = torch.linalg.eigh(Fc @ Fc.transpose(1, 2))
        uy = torch.einsum("bmk,m->bk", U, yc)
        r = uy * S.clamp_min(0).sqrt()
    S = S.clamp_min(0)
    scale = S.sum(1, keepdim=True) / min(m, p)  # mean eigenvalue: the grid is relative to it
    yy = float(yc @ yc)
    best_gcv = torch.full((B,), float("inf"), dtype=F.dtype)
    alpha = torch.zeros(B, dtype=F.dtype)
    for a in _ALPHAS:
        al = a * scale[:, 0]
        den = S + al[:, None]
        rss = yy - 2 * (r * r / den).sum(1) + (r * r * S / (den * den)).sum(1)
        df = (S / den).sum(1)
        gcv = m * rss / (m - df).clamp_min(1.0) ** 2
        better = gcv < best_gcv
        best_gcv, alpha = torch.where(better, gcv, best_gcv), torch.where(better, al, alpha)
    den = S + alpha[:, None]
    if primal:
        beta = torch.einsum("bpk,bk->bp", V, r / den)
    else:  # beta = F^T U (S + alpha)^-1 U^T y
        beta = torch.einsum("bmp,bmk,bk->bp", Fc, U, uy / den)
    intercept = y.mean() - (mu[:, 0] * beta).sum(1)
    return beta, intercept, alpha


def partner_means(q64, J, *, block_floats: int = 2 ** 23):
    """The partners' mean ``q`` and mean ``q^2`` per prompt: ``[m, d_q]`` each (float64).

    Computed in blocks of prompts so the gathered ``[block, K, d_q]`` stays
    near ``block_floats``, whatever ``m``. Shared by every node: compute it
    once per estimator call.
    """
    q = q64.double()
    m, K = J.shape
    step = max(1, block_floats // (K * q.shape[1]))
    qb, q2b = [], []
    for s in range(0, m, step):
        g = q[J[s:s + step]]  # [b, K, d_q]
        qb.append(g.mean(1))
        q2b.append((g * g).mean(1))
    return torch.cat(qb), torch.cat(q2b)


def fit_outcome(q64, n64, x, y, J, *, partners=None, budget: int = 2 ** 24):
    """Fitted outcomes ``h_i`` and their partner averages ``P_i = mean_k h(q_J[i,k], n_i, x_i)``: [B, m] each.

    Args:
        q64: query coordinates ``[m, d_q]`` (float64); n64: node coordinates
            ``[B, m, d_n]``; x: confounder features ``[m, k]`` or None;
            y: outcome ``[m]``; J: partners ``[m, K]``.
        partners: :func:`partner_means` of ``(q64, J)``, if already computed.
        budget: floats of the feature matrix per sub-batch of nodes.
    """
    q = q64.double()
    y = y.double()
    x = None if x is None else x.double()
    B, m, d_n = n64.shape
    d_q, k = q.shape[1], 0 if x is None else x.shape[1]
    q2 = q * q
    qb, q2b = partner_means(q, J) if partners is None else partners  # every feature is linear in q or q^2
    p = 2 * d_q + 2 * d_n + k + d_q * (d_n + k)  # the columns of _features
    step = max(1, budget // (m * p))
    h, P = [], []
    for s in range(0, B, step):
        n = n64[s:s + step].double()
        F = _features(q, q2, n, x)
        beta, b0, _ = _ridge_gcv(F, y)
        h.append(torch.einsum("bmp,bp->bm", F, beta) + b0[:, None])
        Fp = _features(qb, q2b, n, x)  # the query parts from the partners' means: qbar_i outer n_i, ...
        P.append(torch.einsum("bmp,bp->bm", Fp, beta) + b0[:, None])
    return torch.cat(h), torch.cat(P)
