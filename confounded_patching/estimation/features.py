"""The balance features ``g(q, z)`` of entropy balancing: their layout, one builder, and two operators.

The feature map of the deconfounded estimator (Fotouhi et al., arXiv
2412.02893, with the treatment's squares added, see ``docs/estimator.md``)
is ``g(q, z) = [q, q^2 - mean(q^2), z, vec(q outer z)]`` with ``q`` and ``z``
centred and scaled *before* the products are formed; the products are not
re-centred (that would target the observed covariance and keep the
confounding). ``squares=False`` gives the paper's ``[q, z, q outer z]``.

- :func:`feature_layout` — the column slices ``q``, ``q2``, ``z``, ``qz``;
  the layout of every tolerance and dual vector.
- :func:`g_features` — the one dense builder (:func:`balance_features` is
  its checked, standardizing public form).
- :class:`DenseFeatures` and :class:`FactoredFeatures` — what the solvers
  see: scores ``-G lam``, moments ``G^T w``, and rows of chosen columns,
  either from a materialised ``G`` or from ``q`` and ``z`` without building
  it (``lam^T g = lq^T q + ls^T (q^2 - c) + lz^T z + q^T Lam z``, so one pass
  costs ``O(m d_q d_z)`` per problem, and ``q`` may be shared by every
  problem of the batch).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..validation import as_float_tensor, check_bool
from .linalg import standardize_columns

__all__ = ["feature_layout", "block_gamma", "centred_squares", "outer", "g_features", "balance_features",
           "gamma_max", "DenseFeatures", "FactoredFeatures"]


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


def centred_squares(q: torch.Tensor) -> torch.Tensor:
    """``q^2 - mean(q^2)`` per column (along axis -2)."""
    s = q * q
    return s - s.mean(-2, keepdim=True)


def outer(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Row-wise products ``vec(q_i outer z_i)``, row-major in ``q``: ``[..., m, d_q d_z]``."""
    return (q.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)


def g_features(q: torch.Tensor, z: torch.Tensor, *, squares: bool = True, sq: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``g(q, z)`` ``[..., m, p]`` in the order of :func:`feature_layout` (``sq``: the squares, if computed)."""
    cols = [q]
    if squares:
        cols.append(centred_squares(q) if sq is None else sq)
    cols += [z, outer(q, z)]
    return torch.cat(cols, dim=-1)


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
    squares, standardize = check_bool("squares", squares), check_bool("standardize", standardize)
    is_numpy = not isinstance(q, torch.Tensor)
    qt = as_float_tensor("q", q, dtype=torch.float64, ndims=(1, 2))
    zt = as_float_tensor("z", z, dtype=torch.float64, ndims=(1, 2))
    qt = qt[:, None] if qt.ndim == 1 else qt
    zt = zt[:, None] if zt.ndim == 1 else zt
    if qt.shape[0] != zt.shape[0]:
        raise InputError(f"q and z must have the same number of rows; received {qt.shape[0]} and {zt.shape[0]}")
    if standardize:
        qt, zt = (standardize_columns(t, eps=1e-12, relative_to="mean", constant="raise", name=name)
                  for t, name in ((qt, "q"), (zt, "z")))
    G = g_features(qt, zt, squares=squares)
    return G.numpy() if is_numpy else G.to(q.dtype if q.dtype.is_floating_point else torch.float64)


def gamma_max(G) -> np.ndarray:
    """Imbalance of uniform weights, ``||mean_i G_i||_inf`` per problem: for gamma >= it, lam = 0."""
    Gt = as_float_tensor("G", G, dtype=torch.float64, ndims=(2, 3))
    return Gt.mean(-2).abs().amax(-1).numpy()


class DenseFeatures:
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
        out = DenseFeatures(self.G[idx], None if self.offset is None else self.offset[idx])
        if self._rows is not None:
            out._rows = self._rows[idx]
        return out

    def to(self, device, dtype):
        return DenseFeatures(self.G.to(device, dtype), None if self.offset is None else self.offset.to(device, dtype))


class FactoredFeatures:
    """``g(q, z) = [q, q^2 - c, z, q outer z]`` without materialising it.

    ``q`` is ``[m, d_q]`` shared by all problems or ``[B, m, d_q]``; ``z`` is
    ``[B, m, d_z]``. With a shared ``q`` the products are single GEMMs over
    ``[m, B * d_z]``.
    """

    def __init__(self, q: torch.Tensor, z: torch.Tensor, squares: bool):
        self.shared = q.ndim == 2
        self.q = q
        self.sq = centred_squares(q) if squares else None
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
        sq = None
        if self.squares:
            sq = self.sq.expand(B, -1, -1) if self.shared else (self.sq if idx is None else self.sq[idx])
        return g_features(q, z, squares=self.squares, sq=sq)

    def subset(self, idx):
        out = FactoredFeatures.__new__(FactoredFeatures)
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
        out = FactoredFeatures.__new__(FactoredFeatures)
        out.__dict__.update(self.__dict__)
        out._fac = None
        for name in ("q", "sq", "z", "zt"):
            t = getattr(self, name)
            setattr(out, name, None if t is None else t.to(device, dtype))
        return out
