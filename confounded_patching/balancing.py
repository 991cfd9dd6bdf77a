"""Entropy balancing (EB), exact and approximate, batched in torch.

Entropy balancing (Hainmueller 2012) finds the weights ``w`` on the simplex
closest to uniform in entropy such that the weighted column means of a
feature matrix ``G`` vanish. The approximate version (Wang & Zubizarreta
2020) lets column ``k`` be off by at most ``gamma[k]``::

    min_w  sum_i w_i log w_i   s.t.  w in simplex,  |(G^T w)_k| <= gamma_k.

Its dual is unconstrained::

    F(lam) = log sum_i exp(-lam^T g_i) + sum_k gamma_k |lam_k|,
    w(lam) = softmax(-G lam).

This module minimises ``F`` for a batch of problems at once:

- by default, a working-set Newton method (one solver for exact and
  approximate balance): Newton steps on the columns with ``gamma = 0``,
  ``lam != 0`` or a violated tolerance, with the L1 term linear within the
  current orthant (as in OWL-QN, with the exact Hessian ``Cov_w(g)`` on the
  working set), a trust region on the scores and backtracking on ``F``.
  Balance features of the AIE are nearly collinear (``p`` close to ``m``,
  condition numbers 1e5 to 3e5 on SmolLM2's nodes), where first-order
  methods need thousands of iterations; Newton needs tens
  (``benchmarks/solvers.py``).
- ``solver="fista"``: FISTA with backtracking, the step relaxed each
  iteration, soft thresholding and O'Donoghue-Candes gradient restart (the
  solver of R's WeightIt for L1-regularised EB).

Every solution is certified: ``imbalance_`` (sup-norm of ``G^T w``), the
duality gap ``gap_ = sum_k gamma_k |lam_k| - lam_k (G^T w)_k`` and the KKT
residual. Below ``gamma_min = min over the simplex of ||G^T w||_inf`` the
primal is infeasible and the dual diverges; the free certificate
``min_i g_i^T lam > sum_k gamma_k |lam_k|`` (weak duality) detects it and
the problem gets status ``"infeasible"`` instead of meaningless weights.
For ``gamma_k >= |mean_i G_ik|`` for all k the answer is ``lam = 0``
(uniform weights).

The feature map of the deconfounded estimator (Fotouhi et al., arXiv
2412.02893, with the treatment's squares added, see ``docs/estimator.md``)
is ``g(q, z) = [q, q^2 - mean(q^2), z, vec(q outer z)]`` with ``q`` and ``z``
centred and scaled *before* the products are formed; the products are not
re-centred (that would target the observed covariance and keep the
confounding). ``fit_factored(q, z)`` solves it without materialising ``G``:
``lam^T g = lq^T q + ls^T (q^2 - c) + lz^T z + q^T Lam z``, so one pass costs
``O(m d_q d_z)`` per problem, and ``q`` may be shared by every problem of
the batch (one node per problem).

Example::

    >>> G = balance_features(q, z)                  # [m, p] numpy
    >>> eb = EntropyBalancer(gamma=0.0).fit(G)
    >>> eb.weights_.sum(), eb.status_, eb.imbalance_
    (1.0, 'converged', 3e-09)
    >>> eb = EntropyBalancer(gamma=block_gamma(25, 27, product=0.05)).fit_factored(q, zs)  # zs [B, m, 27]
    >>> eb.weights_.shape, eb.status_[:2]
    ((B, m), ['converged', 'converged'])

References: Hainmueller (2012) Political Analysis 20:25-46; Wang &
Zubizarreta (2020) Biometrika 107:93-105; Beck & Teboulle (2009) FISTA;
O'Donoghue & Candes (2015) adaptive restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .blocks import block_rows
from .cholesky import cholesky_escalating
from .errors import InputError, describe

__all__ = [
    "EntropyBalancer",
    "balance_features",
    "block_gamma",
    "feature_layout",
    "gamma_max",
]

STATUSES = ("converged", "max_iter", "infeasible")
MAX_ITER_NEWTON = 200  # default iteration caps of the two solvers
MAX_ITER_FISTA = 5000


# ----------------------------------------------------------------------------- inputs


def _as_tensor(name: str, x, *, dtype, device, ndims: tuple[int, ...]) -> torch.Tensor:
    """Float tensor copy-or-view of ``x`` (never written to); checks dims and finiteness."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise InputError(f"{name} must be a numeric array; received {describe(x)}") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"{name} must be a numeric array; received {describe(arr)}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise InputError(f"{name} must be {want}; received {describe(x)}")
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite; received {describe(x)} with NaN or inf entries")
    return t


def feature_layout(d_q: int, d_z: int, *, squares: bool = True) -> dict[str, slice]:
    """Column slices of ``g(q, z)``: ``q``, ``q2`` (if squares), ``z``, ``qz`` (row-major ``q`` outer ``z``)."""
    out, start = {}, 0
    for name, width in (("q", d_q), ("q2", d_q if squares else 0), ("z", d_z), ("qz", d_q * d_z)):
        if width:
            out[name] = slice(start, start + width)
        start += width
    return out


def block_gamma(d_q: int, d_z: int, *, product: float, marginal: float = 0.0, squares: bool = True) -> np.ndarray:
    """Per-column tolerances for ``g(q, z)``: ``marginal`` on q, q^2, z and ``product`` on ``q outer z``.

    >>> block_gamma(2, 3, product=0.05).shape
    (13,)
    """
    lay = feature_layout(d_q, d_z, squares=squares)
    p = max(s.stop for s in lay.values())
    g = np.full(p, float(marginal))
    g[lay["qz"]] = float(product)
    return g


def _standardize_columns(name: str, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(0, keepdim=True)
    sd = x.std(0, unbiased=False, keepdim=True)
    const = sd.squeeze(0) <= 1e-12 * (1.0 + mean.abs().squeeze(0))
    if bool(const.any()):
        cols = torch.nonzero(const).flatten().tolist()[:10]
        raise InputError(f"{name} must have non-constant columns; received constant column(s) {cols}")
    return (x - mean) / sd


def balance_features(q, z, *, squares: bool = True, standardize: bool = True):
    """Feature matrix ``G = [q, q^2 - mean(q^2), z, vec(q outer z)]`` for entropy balancing.

    Args:
        q: treatment, ``[m, d_q]`` (or ``[m]``).
        z: covariates, ``[m, d_z]`` (or ``[m]``).
        squares: include the centred squares of ``q`` (``False`` gives the
            paper's ``[q, z, q outer z]``).
        standardize: centre and scale ``q`` and ``z`` first (to mean 0,
            standard deviation 1). The product columns are never re-centred.

    Returns:
        ``[m, p]`` array of the input's kind (numpy in, numpy out), with
        ``p = 2 d_q + d_z + d_q d_z`` (``d_q`` fewer without squares).
        Column order is ``feature_layout(d_q, d_z, squares=squares)``.
    """
    is_numpy = not isinstance(q, torch.Tensor)
    qt = _as_tensor("q", q, dtype=torch.float64, device=None, ndims=(1, 2))
    zt = _as_tensor("z", z, dtype=torch.float64, device=None, ndims=(1, 2))
    qt = qt[:, None] if qt.ndim == 1 else qt
    zt = zt[:, None] if zt.ndim == 1 else zt
    if qt.shape[0] != zt.shape[0]:
        raise InputError(f"q and z must have the same number of rows; received {qt.shape[0]} and {zt.shape[0]}")
    if standardize:
        qt, zt = _standardize_columns("q", qt), _standardize_columns("z", zt)
    cols = [qt]
    if squares:
        sq = qt * qt
        cols.append(sq - sq.mean(0, keepdim=True))
    cols += [zt, (qt[:, :, None] * zt[:, None, :]).reshape(qt.shape[0], -1)]
    G = torch.cat(cols, dim=1)
    return G.numpy() if is_numpy else G.to(q.dtype if q.dtype.is_floating_point else torch.float64)


def gamma_max(G) -> np.ndarray:
    """Imbalance of uniform weights, ``||mean_i G_i||_inf`` per problem: for gamma >= it, lam = 0."""
    Gt = _as_tensor("G", G, dtype=torch.float64, device=None, ndims=(2, 3))
    return Gt.mean(-2).abs().amax(-1).numpy()


# ----------------------------------------------------------------------------- feature operators


class _Dense:
    """``G`` given as a tensor ``[B, m, p]``."""

    def __init__(self, G: torch.Tensor, offset: torch.Tensor | None = None):
        self.G = G
        self.B, self.m, self.p = G.shape
        self.offset = offset  # log base weights [B, m] or None
        self._rows = None  # G^T with a zero row appended (rows()), built on first use

    def scores(self, lam):  # -G lam, [B, m]
        return -torch.bmm(self.G, lam.unsqueeze(-1)).squeeze(-1)

    def moments(self, w):  # G^T w, [B, p]
        return torch.bmm(w.unsqueeze(1), self.G).squeeze(1)

    def dense(self, idx=None):
        return self.G if idx is None else self.G[idx]

    def rows(self, idx, batch: slice = slice(None)):
        """The columns ``G[b][:, idx[b]]`` of the problems ``batch`` as rows: [b, a, m] (a new tensor); index p
        gives zeros."""
        if self._rows is None:
            zero = torch.zeros(self.B, 1, self.m, dtype=self.G.dtype, device=self.G.device)
            self._rows = torch.cat([self.G.transpose(1, 2), zero], 1)
        table = self._rows[batch]
        return table[torch.arange(table.shape[0], device=idx.device)[:, None], idx]

    def subset(self, idx):
        out = _Dense(self.G[idx], None if self.offset is None else self.offset[idx])
        if self._rows is not None:
            out._rows = self._rows[idx]
        return out

    def to(self, device, dtype):
        return _Dense(self.G.to(device, dtype), None if self.offset is None else self.offset.to(device, dtype))


class _Factored:
    """``g(q, z) = [q, q^2 - c, z, q outer z]`` without materialising it.

    ``q`` is ``[m, d_q]`` shared by all problems or ``[B, m, d_q]``; ``z`` is
    ``[B, m, d_z]``. With a shared ``q`` the products are single GEMMs over
    ``[m, B * d_z]``.
    """

    def __init__(self, q: torch.Tensor, z: torch.Tensor, squares: bool):
        self.shared = q.ndim == 2
        self.q = q
        self.sq = None
        if squares:
            s = q * q
            self.sq = s - s.mean(-2, keepdim=True)
        self.z = z
        self.B, self.m, self.dz = z.shape
        self.offset = None
        self.dq = q.shape[-1]
        self.squares = squares
        self.lay = feature_layout(self.dq, self.dz, squares=squares)
        self.p = self.lay["qz"].stop
        # [m, B*dz] layout for the shared-q GEMMs
        self.zt = z.permute(1, 0, 2).reshape(self.m, self.B * self.dz) if self.shared else None

    def _split(self, lam):
        L = self.lay
        Lam = lam[:, L["qz"]].reshape(self.B, self.dq, self.dz)
        ls = lam[:, L["q2"]] if self.squares else None
        return lam[:, L["q"]], ls, lam[:, L["z"]], Lam

    def scores(self, lam):
        lq, ls, lz, Lam = self._split(lam)
        B, m, dq, dz = self.B, self.m, self.dq, self.dz
        if self.shared:
            qL = self.q @ Lam.permute(1, 0, 2).reshape(dq, B * dz)  # [m, B*dz]
            cross = (qL * self.zt).view(m, B, dz).sum(-1).T  # [B, m]
            lin = (self.q @ lq.T).T
            if ls is not None:
                lin = lin + (self.sq @ ls.T).T
        else:
            cross = (torch.bmm(self.q, Lam) * self.z).sum(-1)
            lin = torch.bmm(self.q, lq.unsqueeze(-1)).squeeze(-1)
            if ls is not None:
                lin = lin + torch.bmm(self.sq, ls.unsqueeze(-1)).squeeze(-1)
        lin = lin + torch.bmm(self.z, lz.unsqueeze(-1)).squeeze(-1)
        return -(lin + cross)

    def moments(self, w):
        B, m, dq, dz = self.B, self.m, self.dq, self.dz
        parts = []
        if self.shared:
            parts.append(w @ self.q)
            if self.squares:
                parts.append(w @ self.sq)
            parts.append(torch.bmm(w.unsqueeze(1), self.z).squeeze(1))
            wz = (self.zt.view(m, B, dz) * w.T.unsqueeze(-1)).view(m, B * dz)
            qz = (self.q.T @ wz).view(dq, B, dz).permute(1, 0, 2)
        else:
            wb = w.unsqueeze(1)
            parts.append(torch.bmm(wb, self.q).squeeze(1))
            if self.squares:
                parts.append(torch.bmm(wb, self.sq).squeeze(1))
            parts.append(torch.bmm(wb, self.z).squeeze(1))
            qz = torch.bmm(self.q.transpose(1, 2), self.z * w.unsqueeze(-1))
        parts.append(qz.reshape(B, dq * dz))
        return torch.cat(parts, dim=1)

    def _factors(self):
        """Column ``k`` of ``g`` is ``L[lo[k]] * R[:, hi[k]]`` with the rows ``L = [q, q^2 - c, 1, 0]^T`` [n_l, m]
        and ``R = [1, z]^T`` [B, 1 + d_z, m]; ``k = p`` (padding) is the zero column. Built once per operator."""
        if getattr(self, "_fac", None) is None:
            L_, dq, dz, p = self.lay, self.dq, self.dz, self.p
            nq = dq * (2 if self.squares else 1)
            lo = torch.empty(p + 1, dtype=torch.long)
            hi = torch.zeros(p + 1, dtype=torch.long)
            lo[L_["q"]] = torch.arange(dq)
            if self.squares:
                lo[L_["q2"]] = dq + torch.arange(dq)
            lo[L_["z"]], hi[L_["z"]] = nq, 1 + torch.arange(dz)
            lo[L_["qz"]], hi[L_["qz"]] = torch.arange(dq).repeat_interleave(dz), 1 + torch.arange(dz).repeat(dq)
            lo[p] = nq + 1
            q = self.q
            ones = torch.ones(*q.shape[:-1], 1, dtype=q.dtype, device=q.device)
            left = torch.cat([q] + ([self.sq] if self.squares else []) + [ones, torch.zeros_like(ones)], -1)
            right = torch.cat([torch.ones(self.B, self.m, 1, dtype=self.z.dtype, device=self.z.device), self.z], -1)
            self._fac = (lo.to(q.device), hi.to(q.device), left.transpose(-1, -2).contiguous(),
                         right.transpose(1, 2).contiguous())
        return self._fac

    def rows(self, idx, batch: slice = slice(None)):
        """The columns ``g[b][:, idx[b]]`` of the problems ``batch`` as rows: [b, a, m] (a new tensor); index p
        gives zeros."""
        lo, hi, left, right = self._factors()
        right = right[batch]
        b = torch.arange(right.shape[0], device=idx.device)[:, None]
        lrows = left[lo[idx]] if self.shared else left[batch][b, lo[idx]]
        return lrows.mul_(right[b, hi[idx]])

    def dense(self, idx=None):
        z = self.z if idx is None else self.z[idx]
        B = z.shape[0]
        q = self.q.expand(B, -1, -1) if self.shared else (self.q if idx is None else self.q[idx])
        cols = [q]
        if self.squares:
            sq = self.sq.expand(B, -1, -1) if self.shared else (self.sq if idx is None else self.sq[idx])
            cols.append(sq)
        cols += [z, (q.unsqueeze(-1) * z.unsqueeze(-2)).reshape(B, self.m, -1)]
        return torch.cat(cols, dim=-1)

    def subset(self, idx):
        out = _Factored.__new__(_Factored)
        out.__dict__.update(self.__dict__)
        out.z = self.z[idx]
        out.B = out.z.shape[0]
        if self.shared:
            out.zt = out.z.permute(1, 0, 2).reshape(self.m, out.B * self.dz)
        else:
            out.q, out.sq = self.q[idx], (self.sq[idx] if self.squares else None)
        if getattr(self, "_fac", None) is not None:  # the column factors of the kept problems
            lo, hi, left, right = self._fac
            out._fac = (lo, hi, left if self.shared else left[idx], right[idx])
        return out

    def to(self, device, dtype):
        out = _Factored.__new__(_Factored)
        out.__dict__.update(self.__dict__)
        out._fac = None
        for name in ("q", "sq", "z", "zt"):
            t = getattr(self, name)
            setattr(out, name, None if t is None else t.to(device, dtype))
        return out


# ----------------------------------------------------------------------------- solvers


@dataclass
class _Solution:
    lam: torch.Tensor
    status: list
    n_iter: torch.Tensor


def _kkt_residual(grad, lam, gamma):
    """Sup-norm of the minimal subgradient of F: zero exactly at the optimum."""
    on = lam != 0
    r_on = (grad + gamma * torch.sign(lam)).abs()
    r_off = (grad.abs() - gamma).clamp_min(0)
    return torch.where(on, r_on, r_off).amax(-1)


def _certificate_from_scores(s, lam, gamma):
    """The certificate for ``lam`` (any vector: an iterate, a step, a direction) from its scores ``s = -G lam``.

    Weak duality: under any feasible weights ``sum_i w_i g_i^T lam = lam^T G^T w <= sum_k gamma_k |lam_k|``,
    so ``min_i g_i^T lam > sum_k gamma_k |lam_k|`` rules out every feasible ``w``. The margin covers the
    rounding of ``s`` in its dtype.
    """
    lhs = -s.amax(-1)  # s = -G lam
    rhs = (gamma * lam.abs()).sum(-1)
    eps = torch.finfo(s.dtype).eps
    scale = lam.abs().sum(-1) * 1e-9 + 64 * eps * (s.abs().amax(-1) + rhs) + 1e-12
    return (lhs - rhs > scale) & (lam.abs().sum(-1) > 0)


def _with_offset(op, s):
    return s if op.offset is None else s + op.offset


def _soft(x, t):
    return torch.sign(x) * (x.abs() - t).clamp_min(0)


def _decrease(logw, ds):
    """``f(lam + d) - f(lam) = log sum_i w_i exp(ds_i)`` for ``ds = s(d)``, accurate for small steps in float32."""
    small = torch.log1p((torch.exp(logw) * torch.expm1(ds.clamp(max=30.0))).sum(-1))
    big = torch.logsumexp(logw + ds, dim=-1)
    return torch.where(ds.amax(-1) < 30.0, small, big)


def _fista(op, gamma, lam, *, max_iter, tol, check_every=10):
    """Batched FISTA with backtracking, step relaxation and gradient restart.

    The sufficient-decrease test uses ``f(x) - f(y) = log1p(sum_i w_i
    expm1(ds_i))`` with ``ds = s(x - y)`` (scores are linear in lam), which
    is accurate to the size of the step even in float32, unlike the
    difference of two log-sum-exps.
    """
    B = lam.shape[0]
    dev, dt = lam.device, lam.dtype
    status = ["max_iter"] * B
    n_iter = torch.zeros(B, dtype=torch.long)
    active = torch.arange(B, device=dev)
    out = lam.clone()
    cur_op, g_act = op, gamma
    x = lam.clone()
    y = x.clone()
    t = torch.ones(B, dtype=dt, device=dev)
    L = torch.ones(B, dtype=dt, device=dev)
    slack = 50 * torch.finfo(dt).eps

    def logw_from(o, s):
        logw = torch.log_softmax(_with_offset(o, s), dim=-1)
        return logw, -o.moments(torch.exp(logw))

    # scores are linear in lam: s(x) and s(y) are carried along and refreshed exactly at each check
    s_x = cur_op.scores(x)
    s_y = s_x.clone()
    logw_y, g_y = logw_from(cur_op, s_y)
    for it in range(1, max_iter + 1):
        x_new = _soft(y - g_y / L[:, None], g_act / L[:, None])
        d = x_new - y
        ds = cur_op.scores(d)
        df = _decrease(logw_y, ds)
        for _ in range(40):
            model = (g_y * d).sum(-1) + 0.5 * L * (d * d).sum(-1)
            bad = df > model + slack * (g_y.abs() * d.abs()).sum(-1)
            if not bool(bad.any()):
                break
            idx = torch.nonzero(bad).flatten()
            L[idx] = L[idx] * 2.0
            x_new[idx] = _soft(y[idx] - g_y[idx] / L[idx, None], g_act[idx] / L[idx, None])
            d[idx] = x_new[idx] - y[idx]
            ds[idx] = cur_op.subset(idx).scores(d[idx])
            df[idx] = _decrease(logw_y[idx], ds[idx])
        s_new = s_y + ds
        # gradient restart (O'Donoghue & Candes): momentum against the step
        restart = ((y - x_new) * (x_new - x)).sum(-1) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        t = torch.where(restart, torch.ones_like(t), t_new)
        y = x_new + beta[:, None] * (x_new - x)
        s_y = s_new + beta[:, None] * (s_new - s_x)
        x, s_x = x_new, s_new
        L = L * 0.9
        if it % check_every and it != max_iter:
            logw_y, g_y = logw_from(cur_op, s_y)
            continue
        s_x, s_y = cur_op.scores(x), cur_op.scores(y)  # refresh: no drift
        logw_y, g_y = logw_from(cur_op, s_y)
        _, g_x = logw_from(cur_op, s_x)
        done = _kkt_residual(g_x, x, g_act) <= tol
        infeasible = _certificate_from_scores(s_x, x, g_act) & ~done
        stop = done | infeasible
        n_iter[active.cpu()] = it
        if not bool(stop.any()):
            continue
        for k in torch.nonzero(stop).flatten().tolist():
            status[int(active[k])] = "converged" if bool(done[k]) else "infeasible"
        out[active[stop]] = x[stop]
        keep = torch.nonzero(~stop).flatten()
        active = active[keep]
        if active.numel() == 0:
            break
        cur_op = cur_op.subset(keep)
        g_act, x, y, t, L = g_act[keep], x[keep], y[keep], t[keep], L[keep]
        s_x, s_y, logw_y, g_y = s_x[keep], s_y[keep], logw_y[keep], g_y[keep]
    if active.numel():
        out[active] = x
    return _Solution(out, status, n_iter)


def _hessian(op, idx, valid, w, mu):
    """``Cov_w`` of the columns ``idx`` [B, a] of ``G`` (padding where not ``valid``): [B, a, a].

    The columns are centred at their weighted means and scaled by ``sqrt(w)`` before the product (better
    conditioned than ``G^T W G - mu mu^T`` in float32); problems are taken a few at a time so that the
    dense ``[b, a, m]`` rows stay small (:func:`~.blocks.block_rows`).
    """
    B, a = idx.shape
    step = block_rows(op.m * a)
    out = []
    for s in range(0, B, step):
        sl = slice(s, min(B, s + step))
        R = op.rows(idx[sl], batch=sl)
        R.sub_((torch.gather(mu[sl], 1, idx[sl].clamp(max=op.p - 1)) * valid[sl]).unsqueeze(-1))
        R.mul_(w[sl].sqrt().unsqueeze(1))
        out.append(torch.bmm(R, R.transpose(1, 2)))
    return torch.cat(out)


def _newton(op, gamma, lam, *, max_iter, tol, trust=30.0):
    """Batched working-set Newton on the dual, for exact (gamma = 0) and approximate (gamma > 0) balance.

    Each step, per problem: weights ``w = softmax(-G lam)``, gradient ``-G^T w``; stop where the KKT
    residual is at most ``tol`` (``converged``) or a certificate holds for ``lam`` or for the step's
    direction (``infeasible``; :func:`_certificate_from_scores`). Otherwise the working set is the
    columns with ``gamma = 0``, ``lam != 0`` or ``|grad| > gamma``; with the orthant ``sigma = sign(lam)``
    (``-sign(grad)`` where ``lam = 0``) the penalty is linear there, and the Newton direction of
    ``f + sum gamma_k sigma_k lam_k`` on the working set (Hessian ``Cov_w(G_A)`` plus a small ridge)
    is followed, with the components that would leave the orthant at once dropped (as in OWL-QN),
    scaled so that no score moves by more than ``trust`` nats, and backtracked (Armijo on the full
    objective) with components that cross zero set to zero. Near the optimum the working set is the
    support and the steps are those of Newton's method on it, so convergence is quadratic; a problem
    whose line search cannot decrease the objective stops with ``max_iter``.
    """
    B, p = lam.shape
    dt = lam.dtype
    status = ["max_iter"] * B
    n_iter = torch.zeros(B, dtype=torch.long)
    out = lam.clone()
    active = torch.arange(B, device=lam.device)
    cur, g_act, x = op, gamma, lam.clone()
    free = g_act == 0
    ridge = 1e-10 if dt == torch.float64 else 1e-6  # relative to the Hessian's mean diagonal
    for it in range(max_iter + 1):
        s = cur.scores(x)
        logw = torch.log_softmax(_with_offset(cur, s), dim=-1)
        w = torch.exp(logw)
        mu = cur.moments(w)
        grad = -mu
        done = _kkt_residual(grad, x, g_act) <= tol
        stop = done | (_certificate_from_scores(s, x, g_act) & ~done)
        if it < max_iter and not bool(stop.all()):
            nz = x != 0
            ws = free | nz | (grad.abs() > g_act)
            sigma = torch.where(free, torch.zeros_like(x), torch.where(nz, torch.sign(x), -torch.sign(grad)))
            pg = torch.where(ws, grad + g_act * sigma, torch.zeros_like(grad))  # pseudo-gradient on the working set
            a = int(ws.sum(-1).max())
            order = torch.argsort((~ws).to(torch.int8), dim=-1, stable=True)[:, :a]
            valid = torch.gather(ws, 1, order)
            idx = torch.where(valid, order, torch.full_like(order, p))  # index p: a zero column
            H = _hessian(cur, idx, valid, w, mu)
            diag = torch.diagonal(H, dim1=-2, dim2=-1)
            scale = ((diag * valid).sum(-1) / valid.sum(-1).clamp_min(1)).clamp_min(1e-300)
            rhs = -(torch.gather(pg, 1, idx.clamp(max=p - 1)) * valid).to(H.dtype).unsqueeze(-1)
            one = torch.ones_like(diag)  # a larger ridge where the factorization fails
            L, info = cholesky_escalating(H, (torch.where(valid, r * scale[:, None], one) for r in (ridge, 1e-4, 1e-1)))
            dA = torch.cholesky_solve(rhs, L).squeeze(-1)
            dA = torch.where((info > 0)[:, None], rhs.squeeze(-1) / scale[:, None], dA)  # else a gradient step
            d = torch.zeros_like(x).scatter_add_(1, idx.clamp(max=p - 1), (dA * valid).to(dt))
            d = torch.where(~free & ~nz & (torch.sign(d) != sigma), torch.zeros_like(d), d)  # stay in the orthant
            ds = cur.scores(d)
            fac = trust / ds.abs().amax(-1).clamp_min(trust)
            d, ds = d * fac[:, None], ds * fac[:, None]
            by_dir = _certificate_from_scores(ds, d, g_act) & ~stop
            if bool(by_dir.any()):  # move far enough along the certifying direction that lam itself certifies
                gap = (s.amax(-1) + (g_act * x.abs()).sum(-1)).clamp_min(0)  # -(margin of lam), if negative
                margin = -ds.amax(-1) - (g_act * d.abs()).sum(-1)
                c = 2 * gap / margin.clamp_min(torch.finfo(dt).tiny) + 1
                x = torch.where(by_dir[:, None], x + c[:, None] * d, x)
            stop = stop | by_dir
        n_iter[active.cpu()] = it
        if bool(stop.any()) or it == max_iter:
            for k in torch.nonzero(stop).flatten().tolist():
                status[int(active[k])] = "converged" if bool(done[k]) else "infeasible"
            out[active] = x
            if it == max_iter or bool(stop.all()):
                break
            keep = torch.nonzero(~stop).flatten()
            active, cur = active[keep], cur.subset(keep)
            g_act, free, x, logw, pg, sigma, d, ds = (t[keep] for t in (g_act, free, x, logw, pg, sigma, d, ds))
        # backtracking on F = f + sum gamma |lam|, projecting components that cross zero; the scores of a
        # projected step are t ds minus the zeroed components' part, from the rows of the columns that can cross
        t = torch.ones(x.shape[0], dtype=dt, device=x.device)
        pending = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        new = x.clone()
        can = ~free & (x * d < 0) & (d.abs() >= x.abs())  # crosses zero at some t <= 1
        c = int(can.sum(-1).max())
        if c:
            corder = torch.argsort((~can).to(torch.int8), dim=-1, stable=True)[:, :c]
            cvalid = torch.gather(can, 1, corder)
            crows = cur.rows(torch.where(cvalid, corder, torch.full_like(corder, p)))  # [B, c, m]
            xc, dcc, sc = (torch.gather(v, 1, corder) for v in (x, d, sigma))
        for _ in range(50):
            cand = x + t[:, None] * d
            cross = ~free & (torch.sign(cand) * sigma < 0)
            cand = torch.where(cross, torch.zeros_like(cand), cand)
            step = cand - x
            dsc = t[:, None] * ds
            if c:
                vc = xc + t[:, None] * dcc
                vc = torch.where(cvalid & (torch.sign(vc) * sc < 0), vc, torch.zeros_like(vc))
                dsc = dsc + torch.bmm(vc.unsqueeze(1), crows).squeeze(1)
            dF = _decrease(logw, dsc) + (g_act * (cand.abs() - x.abs())).sum(-1)
            ok = pending & (dF <= 1e-4 * (pg * step).sum(-1))
            new[ok] = cand[ok]
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t / 2, t)
        x = new
        if bool(pending.any()):  # no decrease along the direction: stop these problems where they are
            stuck = torch.nonzero(pending).flatten()
            out[active[stuck]] = x[stuck]
            keep = torch.nonzero(~pending).flatten()
            if keep.numel() == 0:
                break
            active, cur = active[keep], cur.subset(keep)
            g_act, free, x = g_act[keep], free[keep], x[keep]
    return _Solution(out, status, n_iter)


# ----------------------------------------------------------------------------- estimator


class EntropyBalancer:
    """Entropy-balancing weights whose weighted feature means vanish (within ``gamma``).

    scikit-learn style: ``__init__`` stores parameters, ``fit`` validates,
    solves and sets the fitted attributes, and returns ``self``.

    Args:
        gamma: tolerance on ``|(G^T w)_k|``: a scalar for every column, a
            vector ``[p]`` per column, or ``[B, p]`` per problem and column.
            ``0`` is exact balance (Hainmueller 2012); ``> 0`` is approximate
            balance (Wang & Zubizarreta 2020).
        max_iter: iteration cap: Newton steps, or FISTA iterations with
            ``solver="fista"`` (None: 200 and 5000).
        tol: stop when the KKT residual (the gradient's sup-norm for gamma =
            0) is at most ``tol``.
        device: where to solve: None (where the input is; the CPU for
            numpy), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
            A GPU that torch does not see raises :class:`InputError`.
        dtype: solver precision (float64 by default).
        solver: ``"auto"`` or ``"newton"`` (working-set Newton, for any
            gamma) or ``"fista"`` (first order; many cheap iterations, slow
            on ill-conditioned features).
        verify: re-check the solution in float64 on the CPU and set
            ``status_`` from that check: ``"auto"`` (default) does so when
            the solve ran off the CPU, where float32 and TF32 matmuls can blur
            the optimality conditions; ``True`` always; ``False`` never.
            torch's global TF32 and matmul-precision settings are never
            changed.

    Attributes (after ``fit``; per problem for batched input):
        weights_: weights summing to one, ``[m]`` or ``[B, m]`` (numpy if
            the input was numpy, else torch).
        lambda_: dual solution, ``[p]`` or ``[B, p]``.
        status_: ``"converged"`` (KKT residual at most ``tol``),
            ``"max_iter"`` (stopped without meeting ``tol``: the iteration cap,
            or a verified solve whose float64 KKT residual exceeds ``tol``) or
            ``"infeasible"`` (the dual certificate holds) — a list for batches.
            Infeasible problems' weights are those at the last iterate and
            must not be used.
        n_iter_: iterations used.
        imbalance_: ``||G^T w||_inf``.
        violation_: ``max_k (|(G^T w)_k| - gamma_k)_+``.
        gap_: duality gap ``sum_k gamma_k |lam_k| - lam_k (G^T w)_k``.
        ess_: effective sample size ``(sum w)^2 / sum w^2``.
        converged_: ``status_ == "converged"``.
        kkt_: KKT residual of ``lambda_`` (sup-norm of the minimal
            subgradient of the dual; 0 at the optimum).
        verified_: whether the attributes come from the float64 CPU re-check
            (then every array attribute is float64 on the CPU).
    """

    def __init__(self, gamma=0.0, *, max_iter: int | None = None, tol: float = 1e-8, device=None,
                 dtype=torch.float64, solver: str = "auto", verify="auto"):
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.solver = solver
        self.verify = verify

    # -- public --------------------------------------------------------------

    def fit(self, G, *, base_weights=None, lambda_init=None):
        """Balance the columns of ``G`` (``[m, p]`` or batched ``[B, m, p]``). Returns ``self``.

        ``base_weights`` (positive, ``[m]`` or ``[B, m]``) replaces the
        uniform reference: the weights minimise the KL divergence to them
        (``w_i ~ base_i exp(-lam^T g_i)``). ``lambda_init`` (``[p]`` or
        ``[B, p]``) warm-starts the solver, e.g. from the previous point of a
        gamma path.
        """
        self._check_params()
        Gt = _as_tensor("G", G, dtype=self.dtype, device=self._device, ndims=(2, 3))
        batched = Gt.ndim == 3
        Gt = Gt if batched else Gt.unsqueeze(0)
        if Gt.shape[1] < 2:
            raise InputError(f"G must have at least 2 rows; received {describe(G)}")
        offset = None
        if base_weights is not None:
            bw = _as_tensor("base_weights", base_weights, dtype=self.dtype, device=self._device, ndims=(1, 2))
            bw = bw if bw.ndim == 2 else bw.unsqueeze(0)
            if bw.shape[-1] != Gt.shape[1] or bw.shape[0] not in (1, Gt.shape[0]) or bool((bw <= 0).any()):
                raise InputError(f"base_weights must be positive with one entry per row of G ({Gt.shape[1]}); "
                                 f"received {describe(base_weights)}")
            offset = torch.log(bw).expand(Gt.shape[0], -1).contiguous()
        op = _Dense(Gt, offset)
        return self._solve(op, batched, numpy_out=not isinstance(G, torch.Tensor), lambda_init=lambda_init)

    def fit_factored(self, q, z, *, squares: bool = True, standardize: bool = True, lambda_init=None):
        """Balance ``g(q, z) = [q, q^2 - mean(q^2), z, q outer z]`` without building it.

        Args:
            q: treatment ``[m, d_q]`` shared by all problems, or ``[B, m, d_q]``.
            z: covariates ``[m, d_z]`` (one problem) or ``[B, m, d_z]``.
            squares: include the centred squares of ``q``.
            standardize: centre and scale ``q`` and ``z`` per problem first
                (as ``balance_features`` does).

        The column order, and so the layout of ``gamma`` and ``lambda_``, is
        ``feature_layout(d_q, d_z, squares=squares)``. ``lambda_init``
        warm-starts the solver. Returns ``self``.
        """
        self._check_params()
        qt = _as_tensor("q", q, dtype=self.dtype, device=self._device, ndims=(2, 3))
        zt = _as_tensor("z", z, dtype=self.dtype, device=self._device, ndims=(2, 3))
        batched = zt.ndim == 3 or qt.ndim == 3
        if zt.ndim == 2:
            zt = zt.unsqueeze(0)
        if qt.ndim == 3 and zt.shape[0] == 1 and qt.shape[0] > 1:
            zt = zt.expand(qt.shape[0], -1, -1)
        if qt.shape[-2] != zt.shape[-2]:
            raise InputError(f"q and z must have the same number of rows; received {describe(q)} and {describe(z)}")
        if qt.ndim == 3 and qt.shape[0] != zt.shape[0]:
            raise InputError(f"q and z must have the same batch size; received {describe(q)} and {describe(z)}")
        if standardize:
            qt, zt = _standardize_batch("q", qt), _standardize_batch("z", zt)
        op = _Factored(qt, zt, squares)
        return self._solve(op, batched, numpy_out=not isinstance(z, torch.Tensor), lambda_init=lambda_init)

    # -- internals -----------------------------------------------------------

    def _check_params(self):
        from .devices import resolve_device

        # None: solve where the input lives (validated device otherwise); the parameter itself is not modified
        self._device = None if self.device is None else resolve_device(self.device)
        if self.verify not in ("auto", True, False):
            raise InputError(f"verify must be 'auto', True or False; received {describe(self.verify)}")
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise InputError(f"dtype must be a torch floating dtype (e.g. torch.float64); "
                             f"received {describe(self.dtype)}")
        if self.solver not in ("auto", "newton", "fista"):
            raise InputError(f"solver must be one of {{'auto', 'newton', 'fista'}}; received {self.solver!r}")
        if self.max_iter is not None and not (isinstance(self.max_iter, int) and not isinstance(self.max_iter, bool)
                                              and self.max_iter >= 1):
            raise InputError(f"max_iter must be None or a positive int; received {describe(self.max_iter)}")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise InputError(f"tol must be a positive number; received {describe(self.tol)}")

    def _gamma(self, B: int, p: int, device) -> torch.Tensor:
        g = self.gamma
        gt = g.detach() if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g, dtype=np.float64))
        gt = gt.to(device=device, dtype=self.dtype)
        if gt.ndim == 0:
            gt = gt.expand(B, p)
        elif gt.ndim == 1 and gt.shape[0] == p:
            gt = gt.expand(B, p)
        elif not (gt.ndim == 2 and tuple(gt.shape) == (B, p)):
            raise InputError(f"gamma must be a scalar, a vector of length p = {p} or an array [B, p] = [{B}, {p}]; "
                             f"received {describe(g)}")
        if not torch.isfinite(gt).all() or bool((gt < 0).any()):
            raise InputError(f"gamma must be finite and >= 0; received {describe(g)} with negative or non-finite entries")
        return gt.contiguous()

    def _solve(self, op, batched: bool, numpy_out: bool, lambda_init=None):
        dev = _device_of(op)  # where the features are: self.device, else where the input was
        gamma = self._gamma(op.B, op.p, dev)
        lam0 = torch.zeros(op.B, op.p, dtype=self.dtype, device=dev)
        if lambda_init is not None:
            li = _as_tensor("lambda_init", lambda_init, dtype=self.dtype, device=dev, ndims=(1, 2))
            if li.shape[-1] != op.p or (li.ndim == 2 and li.shape[0] != op.B):
                raise InputError(f"lambda_init must have shape [{op.p}] or [{op.B}, {op.p}]; received {describe(lambda_init)}")
            lam0 = lam0 + li
        use_newton = self.solver in ("auto", "newton")
        max_iter = self.max_iter if self.max_iter is not None else (MAX_ITER_NEWTON if use_newton else MAX_ITER_FISTA)
        # lam = 0 is optimal where uniform weights already satisfy every tolerance
        w0 = torch.softmax(_with_offset(op, torch.zeros(op.B, op.m, dtype=self.dtype, device=dev)), -1)
        trivial = ((op.moments(w0).abs() - gamma) <= 1e-12 * (1 + gamma)).all(-1)
        sol = _Solution(torch.where(trivial[:, None], torch.zeros_like(lam0), lam0),
                        ["converged"] * op.B, torch.zeros(op.B, dtype=torch.long))
        todo = torch.nonzero(~trivial).flatten()
        if todo.numel():
            sub = op.subset(todo)
            solve = _newton if use_newton else _fista
            s = solve(sub, gamma[todo], lam0[todo], max_iter=max_iter, tol=self.tol)
            sol.lam[todo] = s.lam
            for k, i in enumerate(todo.tolist()):
                sol.status[i] = s.status[k]
            sol.n_iter[todo.cpu()] = s.n_iter
        self.verified_ = _verify_wanted(self.verify, dev)
        if self.verified_:
            op, sol, gamma = _verify(op, sol, gamma, self.tol)
        self._set_attributes(op, sol, gamma, batched, numpy_out)
        return self

    def _set_attributes(self, op, sol, gamma, batched, numpy_out):
        s = _with_offset(op, op.scores(sol.lam))
        w = torch.softmax(s, dim=-1)
        mom = op.moments(w)
        conv = lambda t: t.cpu().numpy() if numpy_out else t  # noqa: E731
        pick = (lambda t: t) if batched else (lambda t: t[0])
        self.weights_ = conv(pick(w))
        self.lambda_ = conv(pick(sol.lam))
        self.status_ = sol.status if batched else sol.status[0]
        self.n_iter_ = sol.n_iter.numpy() if batched else int(sol.n_iter[0])
        self.imbalance_ = conv(pick(mom.abs().amax(-1)))
        self.violation_ = conv(pick((mom.abs() - gamma).clamp_min(0).amax(-1)))
        self.gap_ = conv(pick((gamma * sol.lam.abs() - sol.lam * mom).sum(-1)))
        self.ess_ = conv(pick(1.0 / (w * w).sum(-1)))
        self.moments_ = conv(pick(mom))
        self.kkt_ = conv(pick(_kkt_residual(-mom, sol.lam, gamma)))
        self.converged_ = [st == "converged" for st in sol.status] if batched else sol.status[0] == "converged"
        self.gamma_ = conv(pick(gamma))
        self.n_features_ = op.p


def _verify_wanted(verify, device: torch.device) -> bool:
    """``verify=True``, or ``"auto"`` off the CPU."""
    return verify is True or (verify == "auto" and torch.device(device).type != "cpu")


def _device_of(op) -> torch.device:
    return (op.G if isinstance(op, _Dense) else op.z).device


def _verify(op, sol: _Solution, gamma: torch.Tensor, tol: float):
    """Re-check a solution in float64 on the CPU: statuses from the float64 KKT residual and dual certificate.

    A solve in float32 (or with TF32 matmuls on a GPU) may stop where its
    own arithmetic says the KKT conditions hold when they do not, or miss
    that they do. Here ``converged`` means the float64 KKT residual is at
    most ``tol``; otherwise ``infeasible`` where the float64 certificate
    holds, else ``max_iter``. Returns the float64 CPU operator, solution
    and tolerances, from which the fitted attributes are then computed.
    """
    cpu, f64 = torch.device("cpu"), torch.float64
    op64 = op.to(cpu, f64)
    lam = sol.lam.to(cpu, f64)
    gam = gamma.to(cpu, f64)
    s = op64.scores(lam)
    w = torch.softmax(_with_offset(op64, s), dim=-1)
    kkt = _kkt_residual(-op64.moments(w), lam, gam)
    infeasible = _certificate_from_scores(s, lam, gam)
    status = ["converged" if bool(k <= tol) else "infeasible" if bool(c) else "max_iter"
              for k, c in zip(kkt, infeasible)]
    return op64, _Solution(lam, status, sol.n_iter.cpu()), gam


def _standardize_batch(name: str, x: torch.Tensor) -> torch.Tensor:
    """Centre and scale columns along the row axis; constant columns become zeros."""
    mean = x.mean(-2, keepdim=True)
    sd = x.std(-2, unbiased=False, keepdim=True)
    ok = sd > 1e-12 * (1.0 + mean.abs())
    return torch.where(ok, (x - mean) / torch.where(ok, sd, torch.ones_like(sd)), torch.zeros_like(x))
