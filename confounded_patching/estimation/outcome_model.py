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
``q`` and ``n`` the estimator's centred, scaled coordinates. The additive
columns ``[q, q^2, n, n^2, x]`` (about 100 at d = 25) are not penalized;
the products get a light ridge penalty, ``ALPHA = 0.01`` times the mean
centred sum of squares of the ``q outer n`` columns, which keeps the nearly
collinear products solvable. Both choices come from planted-truth
simulations (``docs/estimator.md``, "The outcome model's penalty"): the
correction needs the product coefficients with little shrinkage, which a
penalty tuned for prediction does not give (the penalties chosen by
generalised cross-validation left a quarter of the planted effect
uncorrected at d = 25), and shrinking the additive columns too lets
their signal leak into the correlated products, which then manufactures
an AIE for outcomes with none (up to -0.4 on the additive design). All
features but the products are linear in ``q``'s partner, so the partner
average ``mean_k h(q_J[i,k], ...)`` is exact from the partners' mean ``q``
and mean ``q^2``.
"""

from __future__ import annotations

import torch

from .features import outer
from .linalg import BLOCK_FLOATS, block_rows, cholesky_escalating

__all__ = ["ALPHA", "fit_outcome", "fit_outcomes", "partner_means", "outcome_features", "ridge"]

ALPHA = 0.01  # penalty of the products, in units of the q outer n columns' mean centred sum of squares


def outcome_features(q, q2, n, x):
    """``[q, q^2, n, n^2, q outer n]``, then with ``x`` ``[x, q outer x]``: [B, m, p].

    From q, q2 [m, d_q], n [B, m, d_n], x [m, k] or None. The unadjusted model's columns come first, so
    its Gram matrix (and Cholesky factor) is the leading block of the adjusted model's. ``q`` and ``q2``
    may be per-prompt averages over partners (then ``q2`` is the mean of the squares).
    """
    B = n.shape[0]
    parts = [q.expand(B, -1, -1), q2.expand(B, -1, -1), n, n * n, outer(q, n)]
    if x is not None:
        parts += [x.expand(B, -1, -1), outer(q, x).expand(B, -1, -1)]
    return torch.cat(parts, -1)


def _penalized(d_q: int, d_n: int, k: int) -> tuple:
    """Masks over the columns of :func:`outcome_features`: (penalized = the products, the ``q outer n`` block)."""
    parts = [(2 * d_q + 2 * d_n, False, False), (d_q * d_n, True, True), (k, False, False), (d_q * k, True, False)]
    pen = torch.cat([torch.full((w,), v) for w, v, _ in parts])
    qn = torch.cat([torch.full((w,), v) for w, _, v in parts])
    return pen, qn


def ridge(F, y, penalized, scale_cols, alpha: float = ALPHA, L=None):
    """Ridge of ``y`` [m] on ``F`` [B, m, p]: the ``penalized`` columns get ``a``, the others ``1e-8 a``.

    ``a = alpha x`` the mean centred sum of squares of the ``scale_cols`` columns (the ``q outer n``
    block, common to the adjusted and unadjusted models); the tiny penalty of the other columns only
    keeps collinear columns solvable (where the factorization still fails, e.g. a node whose
    coordinates repeat the query's, it becomes ``1e-10``, ``1e-6``, then ``1e-3`` times each free
    column's own centred sum of squares). The intercept is free. Solved by Cholesky in float64:
    ``(F_c^T F_c + diag(pen)) beta = F_c^T y_c``. Returns (beta [B, p], intercept [B], a [B], the
    Cholesky factor [B, p, p]); given a factor ``L`` (of the same system), only the solve is done
    (and ``a`` is None).
    """
    F = F.double()
    y = y.double()
    mu = F.mean(1, keepdim=True)
    Fc = F - mu
    yc = y - y.mean()
    a = None
    if L is None:
        A = Fc.transpose(1, 2) @ Fc  # [B, p, p]
        own = torch.diagonal(A, dim1=1, dim2=2)  # each column's centred sum of squares
        a = alpha * own[:, scale_cols].mean(1).clamp_min(1e-300)
        free = [torch.where(penalized, a[:, None], eps * own + 1e-300) for eps in (1e-10, 1e-6, 1e-3)]
        L, _ = cholesky_escalating(A, [a[:, None] * torch.where(penalized, 1.0, 1e-8)] + free)
    beta = torch.cholesky_solve(torch.einsum("bmp,m->bp", Fc, yc).unsqueeze(-1), L).squeeze(-1)
    return beta, y.mean() - (mu[:, 0] * beta).sum(1), a, L


def partner_means(q64, J, *, block_floats: int = BLOCK_FLOATS):
    """The partners' mean ``q`` and mean ``q^2`` per prompt: ``[m, d_q]`` each (float64).

    Computed in blocks of prompts so the gathered ``[block, K, d_q]`` stays
    near ``block_floats``, whatever ``m``. Shared by every node: compute it
    once per estimator call.
    """
    q = q64.double()
    m, K = J.shape
    step = block_rows(K * q.shape[1], block_floats)
    qb, q2b = [], []
    for s in range(0, m, step):
        g = q[J[s:s + step]]  # [b, K, d_q]
        qb.append(g.mean(1))
        q2b.append((g * g).mean(1))
    return torch.cat(qb), torch.cat(q2b)


def fit_outcome(q64, n64, x, y, J, *, partners=None, alpha: float = ALPHA, budget: int = BLOCK_FLOATS):
    """Fitted outcomes ``h_i`` and their partner averages ``P_i = mean_k h(q_J[i,k], n_i, x_i)``: [B, m] each.

    Args:
        q64: query coordinates ``[m, d_q]`` (float64); n64: node coordinates
            ``[B, m, d_n]``; x: confounder features ``[m, k]`` or None;
            y: outcome ``[m]``; J: partners ``[m, K]``.
        partners: :func:`partner_means` of ``(q64, J)``, if already computed.
        alpha: ridge penalty of the products (:data:`ALPHA`).
        budget: floats of the feature matrix per sub-batch of nodes.
    """
    return fit_outcomes(q64, n64, [x], y, J, partners=partners, alpha=alpha, budget=budget)[0]


def fit_outcomes(q64, n64, xs, y, J, *, partners=None, alpha: float = ALPHA, budget: int = BLOCK_FLOATS):
    """:func:`fit_outcome` for several confounders ``xs`` (``None``: unadjusted) on the same nodes: [(h, P), ...].

    An unadjusted model shares the Gram matrix and Cholesky factor of an adjusted one (its columns are
    their leading block; the penalty scale comes from the ``q outer n`` columns both have), so the
    pair costs one factorization per node, not two.
    """
    q = q64.double()
    y = y.double()
    B, m, d_n = n64.shape
    d_q = q.shape[1]
    q2 = q * q
    qb, q2b = partner_means(q, J) if partners is None else partners  # every feature is linear in q or q^2
    xs = [None if x is None else x.double() for x in xs]
    full = next((x for x in xs if x is not None), None)  # the confounder whose factorization is shared
    k = 0 if full is None else full.shape[1]
    p0 = 2 * d_q + 2 * d_n + d_q * d_n  # the unadjusted model's columns
    step = block_rows(m * (p0 + k + d_q * k), budget)
    pen, qn = _penalized(d_q, d_n, k)
    out = [([], []) for _ in xs]
    for s in range(0, B, step):
        n = n64[s:s + step].double()
        F = outcome_features(q, q2, n, full)
        full_fit = None if full is None else ridge(F, y, pen, qn, alpha)
        base_fit = None
        if any(x is None for x in xs):  # the unadjusted model, from the adjusted one's factor where there is one
            L = None if full_fit is None else full_fit[3][:, :p0, :p0].contiguous()
            base_fit = ridge(F[:, :, :p0], y, pen[:p0], qn[:p0], alpha, L=L)
        for i, x in enumerate(xs):
            if x is None:
                beta, b0 = base_fit[:2]
                Fi, xi = F[:, :, :p0], None
            elif x is full:
                beta, b0 = full_fit[:2]
                Fi, xi = F, x
            else:  # another confounder: its own model
                Fi, xi = outcome_features(q, q2, n, x), x
                pi, qi = _penalized(d_q, d_n, x.shape[1])
                beta, b0 = ridge(Fi, y, pi, qi, alpha)[:2]
            h = torch.einsum("bmp,bp->bm", Fi, beta) + b0[:, None]
            out[i][0].append(h)
            out[i][1].append(h + _partner_shift(beta, n, xi, q, q2, qb, q2b))
    return [(torch.cat(h), torch.cat(P)) for h, P in out]


def _partner_shift(beta, n, x, q, q2, qb, q2b):
    """``P - h``: only the q-dependent columns change, to the partners' means (``q outer n`` is linear in q)."""
    d_q, d_n = q.shape[1], n.shape[2]
    bq, bq2 = beta[:, :d_q], beta[:, d_q:2 * d_q]
    o = 2 * d_q + 2 * d_n
    slope = bq[:, None, :] + torch.einsum("bde,bme->bmd", beta[:, o:o + d_q * d_n].reshape(-1, d_q, d_n), n)
    if x is not None:  # d h / d q at each prompt: [b, m, d_q]
        k = x.shape[1]
        Bqx = beta[:, o + d_q * d_n + k:].reshape(-1, d_q, k)
        slope = slope + torch.einsum("bdk,mk->bmd", Bqx, x)
    return ((qb - q)[None] * slope).sum(-1) + torch.einsum("md,bd->bm", q2b - q2, bq2)
