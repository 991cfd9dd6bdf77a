"""The estimator's partners: ``K`` random prompts per prompt, and the statistics computed over the pairs.

(Not to be confused with clean/corrupt prompt pairs of classic patching, or
the donor pairs of the resample AIE.) For each prompt ``i``, ``K`` partners ``j != i`` (the same for every node:
common random numbers, so node rankings are not pair noise). With
``log w_ij = log pi_x,i + log R^x_ij + log R^nx_ij`` (Fotouhi et al., arXiv
2412.02893, Eq. 2; the cross-world weight of Hsu, Huber, Lee & Lettry 2020):

- Horvitz-Thompson: ``AIE = mean_i mean_j pi_x,i (R^nx_ij R^x_ij - 1) y_i``
  (the paper's form; optionally winsorized at the p / 1 - p quantiles).
- Hajek: ``AIE = sum_i W_i y_i / sum_i W_i - sum_i pi_i y_i / sum_i pi_i`` with
  ``W_i = sum_j w_ij``: only per-prompt totals enter, and the estimate is
  invariant to shifting ``y``.
- Calibration (Hajek): an exact entropy tilt of ``W`` so that its weighted
  means of ``[q, q^2, n, n^2, x]`` equal the baseline's (Hainmueller 2012,
  with base weights). In the population ``W`` is already orthogonal to every
  outcome additive in ``q`` and ``(n, x)``, so the tilt is a no-op there; in
  samples it removes AIEs manufactured for additive outcomes. Its features
  are :func:`additive_features`.

Everything node-specific is computed for a few nodes at a time and reduced
to per-prompt totals at once, so memory is ``O(sub * m * K)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError, describe
from ..validation import check_int
from .balancer import EntropyBalancer
from .linalg import BLOCK_FLOATS, block_rows, standardize_columns

__all__ = ["pair_index", "check_partners", "Partners", "stats_ht", "stats_hajek", "calibrate", "additive_features"]


def pair_index(m: int, K: int = 200, seed: int = 0) -> np.ndarray:
    """Random partners ``J[i, k] != i``, distinct within a row: ``[m, min(K, m - 1)]`` int64.

    Pass the same array to every call (``pairs=``) so that all nodes share
    the same pairs (common random numbers): node rankings then do not depend
    on pair noise.
    """
    check_int("m", m, minimum=2, expected="an int >= 2")
    check_int("K", K, minimum=1, expected="a positive int")
    K = min(int(K), m - 1)
    rng = np.random.default_rng(seed)
    out = np.empty((m, K), dtype=np.int64)
    step = max(1, 2_000_000 // m)
    for start in range(0, m, step):
        stop = min(m, start + step)
        keys = rng.random((stop - start, m - 1))
        pick = np.argpartition(keys, K - 1, axis=1)[:, :K] if K < m - 1 else np.argsort(keys, axis=1)
        rows = np.arange(start, stop)[:, None]
        out[start:stop] = pick + (pick >= rows)  # skip j == i
    return out


def check_partners(pairs, m: int) -> torch.Tensor:
    """``pairs`` (the ``pairs=`` argument: partner indices ``[m, K]``) as an int64 tensor, checked."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[0] != m or arr.dtype.kind not in "iu":
        raise InputError(f"pairs must be an int array [m = {m}, K]; received {describe(pairs)}")
    if arr.min() < 0 or arr.max() >= m or (arr == np.arange(m)[:, None]).any():
        raise InputError(f"pairs must hold indices in [0, {m}) with pairs[i, k] != i")
    return torch.from_numpy(arr.astype(np.int64))


def _kth(x: torch.Tensor, frac: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row lower ``frac`` quantile of ``x`` [B, N] (order statistic), over entries where ``mask``."""
    if mask is not None:
        x = x[:, mask]
    N = x.shape[1]
    k = min(N, max(1, int(math.floor(frac * (N - 1))) + 1))
    return torch.kthvalue(x, k, dim=1).values


def _winsorize(T: torch.Tensor, p: float | None, mask: torch.Tensor | None = None):
    """Clip each row of ``T`` [B, N] at its ``p`` and ``1 - p`` quantiles; returns (T, share clipped)."""
    if not p:
        return T, torch.zeros(T.shape[0], dtype=T.dtype)
    lo, hi = _kth(T, p, mask)[:, None], _kth(T, 1 - p, mask)[:, None]
    clipped = (T < lo) | (T > hi)
    if mask is not None:
        share = (clipped & mask).sum(1) / mask.sum().clamp_min(1)
    else:
        share = clipped.double().mean(1)
    return torch.minimum(torch.maximum(T, lo), hi), share.to(T.dtype)


_CAP = 700.0  # largest log-weight kept (float64 exp overflows near 709)


class Partners:
    """The pairs ``(i, J[i, k])`` and everything about them shared by all nodes.

    Node quantities are computed for blocks of prompts ``i`` at a time, all
    nodes of a chunk together, and reduced at once to per-prompt totals, so
    memory stays at about ``max(B, d_q) * block * K`` floats (``block``
    prompts, about :data:`~.linalg.BLOCK_FLOATS` floats' worth) whatever the
    number of prompts and nodes. Winsorizing needs every pair of a node at
    once, so with it there is a single block and the nodes are taken
    ``sub`` at a time.
    """

    BLOCK_FLOATS = BLOCK_FLOATS

    def __init__(self, q64, J, log_pi_x, dx_all, rows, sub: int = 8):
        self.q64, self.J, self.rows, self.sub = q64, J, rows, sub
        self.m = q64.shape[0]
        self.lp = log_pi_x
        self.dx_all = dx_all

    def _blocks(self, B: int, whole: bool = False):
        """Row blocks: (block's position in ``rows``, the rows, their dq ``[b, K, d_q]``, their dx ``[b, K]``)."""
        n = len(self.rows)
        K, d_q = self.J.shape[1], self.q64.shape[1]
        step = n if whole else block_rows(K * max(d_q, B), self.BLOCK_FLOATS)
        for s in range(0, n, step):
            r = self.rows[s:s + step]
            yield slice(s, s + len(r)), r, self.q64[self.J[r]] - self.q64[r, None, :], self.dx_all[r]

    def _logw(self, model, nodes: slice, r, dq, dx):
        """``log w_ij = log pi_x,i + log R^x_ij + log R^nx_ij`` for the block's prompts: [b, K, B'] (prompt-major)."""
        logw = model.log_ratio(self.q64, self.J, r, nodes=nodes, dq=dq).double().neg_()
        logw += (self.lp[r][:, None] + dx).unsqueeze(-1)
        return logw.clamp_(max=_CAP)

    def _parts(self, B):
        return [slice(s, min(B, s + self.sub)) for s in range(0, B, self.sub)]

    def pair_ess(self, model) -> torch.Tensor:
        """Effective sample size of the pair weights ``w_ij`` as a share of ``m' K``: [B]."""
        B = model.a.shape[0]
        lse1 = lse2 = torch.full((B,), -math.inf, dtype=torch.float64)
        for _, r, dq, dx in self._blocks(B):
            logw = self._logw(model, slice(None), r, dq, dx).flatten(0, 1)  # [b K, B]
            top = logw.amax(0)
            e = torch.exp(logw - top)
            lse1 = torch.logaddexp(lse1, top + torch.log(e.sum(0)))
            lse2 = torch.logaddexp(lse2, 2 * top + torch.log((e * e).sum(0)))
        return torch.exp(2 * lse1 - lse2) / (len(self.rows) * self.J.shape[1])

    def hajek_totals(self, model, winsorize):
        """``log W_i = log sum_j w_ij`` per node [B, m'] (log-weights winsorized per node) and the clipped share."""
        B = model.a.shape[0]
        if not winsorize:
            parts = [torch.logsumexp(self._logw(model, slice(None), r, dq, dx), 1) for _, r, dq, dx in self._blocks(B)]
            return torch.cat(parts, 0).T.contiguous(), torch.zeros(B, dtype=torch.float64)
        logW, share = [], []
        for sl in self._parts(B):
            for _, r, dq, dx in self._blocks(B, whole=True):
                logw = self._logw(model, sl, r, dq, dx).permute(2, 0, 1)
                b, mr, K = logw.shape
                logw, sh = _winsorize(logw.reshape(b, mr * K), winsorize)
                logW.append(torch.logsumexp(logw.reshape(b, mr, K), -1))
                share.append(sh)
        return torch.cat(logW), torch.cat(share)

    def ht_row_means(self, model, y, variant, winsorize):
        """Per-prompt means over partners of the HT terms ``T_ij`` (winsorized per node): [B, m], share."""
        B = model.a.shape[0]
        parts = [slice(None)] if not winsorize else self._parts(B)
        rows_out, share = [], []
        for sl in parts:
            full, shares = None, []
            for _, r, dq, dx in self._blocks(B, whole=bool(winsorize)):
                lp, yr = self.lp[r], y[r]
                logw = self._logw(model, sl, r, dq, dx).permute(2, 0, 1)  # [b, m', K]
                if variant == "eq2":  # pi_x,i (R^nx R^x - 1) y_i
                    T = (torch.exp(logw) - torch.exp(lp)[:, None]) * yr[:, None]
                else:  # algorithm1: R^nx pi_x,i (R^x - 1) y_i
                    T = torch.exp((logw - dx).clamp(max=_CAP)) * torch.expm1(dx.clamp(max=_CAP)) * yr[:, None]
                b, mr, K = T.shape
                T, sh = _winsorize(T.reshape(b, mr * K), winsorize)
                if full is None:
                    full = torch.zeros(b, self.m, dtype=T.dtype)
                full[:, r] = T.reshape(b, mr, K).mean(-1)
                shares.append(sh)
            rows_out.append(full)
            share.append(shares[0] if len(shares) == 1 else torch.zeros_like(shares[0]))
        return torch.cat(rows_out), torch.cat(share)


def stats_ht(row_mean, counts) -> tuple:
    """HT AIE ``mean_i mean_j T_ij`` and its bootstrap over prompts."""
    m = row_mean.shape[1]
    return row_mean.sum(1) / m, row_mean @ counts.T / m


def stats_hajek(logW, log_pi_x, y, counts, calib=None, aug=None) -> tuple:
    """Hajek AIE ``sum_i W_i y_i / sum_i W_i - sum_i pi_i y_i / sum_i pi_i`` and its bootstrap over prompts.

    ``W_i = sum_j w_ij`` are the pair-weight totals; ``calib`` [B, m, h]
    (optional) are the :func:`additive_features` of :func:`calibrate`; ``aug`` =
    ``(h, P)`` [B, m] each (optional) are the fitted outcomes and their
    partner averages of :func:`~.outcome_model.fit_outcome`, which add
    ``sum_i pi_i P_i / sum_i pi_i - sum_i W_i h_i / sum_i W_i`` (the
    augmented estimator).
    """
    pi = torch.exp(log_pi_x - log_pi_x.max())
    if calib is not None:
        logW = calibrate(logW, pi, calib)
    W = torch.exp(logW - logW.amax(1, keepdim=True))
    value = (W @ y) / W.sum(1) - (pi * y).sum() / pi.sum()
    boot = ((W * y) @ counts.T) / (W @ counts.T) - ((counts @ (pi * y)) / (counts @ pi))[None, :]
    if aug is not None:
        h, P = aug
        value = value + (P @ pi) / pi.sum() - (W * h).sum(1) / W.sum(1)
        boot = boot + ((P * pi) @ counts.T) / (counts @ pi)[None, :] - ((W * h) @ counts.T) / (W @ counts.T)
    return value, boot


def calibrate(logW: torch.Tensor, pi: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Tilt the pair-weight totals ``W_i`` so their weighted means of ``H`` equal those of the baseline ``pi``.

    In the population the cross-world weights are orthogonal to every
    outcome additive in ``q`` and ``(n, x)``; regularised weight models are
    not, which biases the AIE of additive outcomes. The tilt is an exact
    entropy balance of ``H = [q, q^2, n, n^2, x]`` with base weights ``W``
    and targets the ``pi``-weighted means (a no-op in the population).
    Problems whose balance is infeasible keep their untilted totals.
    """
    target = (pi[:, None] * H).sum(1, keepdim=True) / pi.sum() if H.ndim == 2 else \
        (pi[None, :, None] * H).sum(1, keepdim=True) / pi.sum()
    G = H - target
    # floor: log-weights spread by more than ~745 would underflow to exact zeros, which EB rejects
    base = torch.exp(logW - logW.amax(1, keepdim=True)).clamp_min(1e-300)
    eb = EntropyBalancer(0.0, tol=1e-8, max_iter=100, dtype=torch.float64, warn=False).fit(G, base_weights=base)
    ok = torch.tensor([s == "converged" for s in eb.status_])
    tilted = torch.log(eb.weights_.clamp_min(1e-300))
    return torch.where(ok[:, None], tilted, logW)


def additive_features(q64, n64, x):
    """``[q, q^2, n, n^2, x]`` per node, standardized: [B, m, h] (the calibration's balance features)."""
    B = n64.shape[0]
    parts = [q64.expand(B, -1, -1), (q64 * q64).expand(B, -1, -1), n64, n64 * n64]
    if x is not None:
        parts.append(x.double().expand(B, -1, -1))
    return standardize_columns(torch.cat(parts, -1))
