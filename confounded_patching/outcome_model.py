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
columns ``[q, q^2, n, n^2, x]`` (about 100 at d = 25, against m >= 1000
prompts) are not penalized; the products get a light ridge penalty,
``ALPHA = 0.01`` times their mean centred sum of squares, which keeps the
nearly collinear products solvable. Both choices come from planted-truth
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

from .blocks import BLOCK_FLOATS, block_rows

__all__ = ["ALPHA", "fit_outcome", "partner_means"]

ALPHA = 0.01  # ridge penalty of the product columns, in units of their mean centred sum of squares


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


def _ridge(F, y, free: int, alpha: float = ALPHA):
    """Ridge of ``y`` [m] on the columns of ``F`` [B, m, p] with the first ``free`` columns unpenalized.

    The intercept is free; the other columns get the penalty ``a = alpha x`` the mean diagonal of their
    centred Gram matrix, the free ones ``1e-8 a`` (only so that exactly collinear columns stay solvable).
    Solved by Cholesky in float64: ``(F_c^T F_c + diag(a_k)) beta = F_c^T y_c``. Returns the coefficients
    [B, p], the intercept [B] and ``a`` [B].
    """
    F = F.double()
    y = y.double()
    B, m, p = F.shape
    mu = F.mean(1, keepdim=True)
    Fc = F - mu
    yc = y - y.mean()
    A = Fc.transpose(1, 2) @ Fc  # [B, p, p]
    diag = torch.diagonal(A, dim1=1, dim2=2)
    a = alpha * (diag[:, free:].mean(1) if free < p else diag.mean(1)).clamp_min(1e-300)
    pen = torch.ones(p, dtype=A.dtype)
    pen[:free] = 1e-8
    L = torch.linalg.cholesky(A + torch.diag_embed(a[:, None] * pen))
    beta = torch.cholesky_solve(torch.einsum("bmp,m->bp", Fc, yc).unsqueeze(-1), L).squeeze(-1)
    intercept = y.mean() - (mu[:, 0] * beta).sum(1)
    return beta, intercept, a


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
        alpha: ridge penalty in units of the mean eigenvalue (:data:`ALPHA`).
        budget: floats of the feature matrix per sub-batch of nodes.
    """
    q = q64.double()
    y = y.double()
    x = None if x is None else x.double()
    B, m, d_n = n64.shape
    d_q, k = q.shape[1], 0 if x is None else x.shape[1]
    q2 = q * q
    qb, q2b = partner_means(q, J) if partners is None else partners  # every feature is linear in q or q^2
    free = 2 * d_q + 2 * d_n + k  # the additive columns [q, q^2, n, n^2, x], unpenalized
    p = free + d_q * (d_n + k)  # the columns of _features
    step = block_rows(m * p, budget)
    h, P = [], []
    for s in range(0, B, step):
        n = n64[s:s + step].double()
        F = _features(q, q2, n, x)
        beta, b0, _ = _ridge(F, y, free, alpha)
        h.append(torch.einsum("bmp,bp->bm", F, beta) + b0[:, None])
        # P - h: only the q-dependent columns change, to the partners' means (q outer n is linear in q)
        bq, bq2 = beta[:, :d_q], beta[:, d_q:2 * d_q]
        Bqn = beta[:, 2 * d_q + 2 * d_n + k:2 * d_q + 2 * d_n + k + d_q * d_n].reshape(-1, d_q, d_n)
        slope = bq[:, None, :] + torch.einsum("bde,bme->bmd", Bqn, n)  # d h / d q at each prompt: [b, m, d_q]
        if x is not None:
            Bqx = beta[:, 2 * d_q + 2 * d_n + k + d_q * d_n:].reshape(-1, d_q, k)
            slope = slope + torch.einsum("bdk,mk->bmd", Bqx, x)
        P.append(h[-1] + ((qb - q)[None] * slope).sum(-1) + torch.einsum("md,bd->bm", q2b - q2, bq2))
    return torch.cat(h), torch.cat(P)
