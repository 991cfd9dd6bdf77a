"""Linear algebra of the estimator: standardization, PCA, randomized SVD, escalating Cholesky, row blocks.

The deconfounded estimator (Fotouhi et al., arXiv 2412.02893) works with a
prompt's query embedding reduced by PCA to ``d_q`` components and a node's
activation reduced to ``d_n`` components, all centred and scaled to unit
variance.

- :func:`pca` — centred and scaled principal components in torch, batched
  over a leading axis, by a seeded randomized range finder (Halko,
  Martinsson & Tropp 2011, :func:`randomized_svd`) when ``d`` is much smaller
  than the width.
- :func:`standardize` — mean 0, standard deviation 1 per column; constant
  columns become zeros. :func:`standardize_columns` is its one
  implementation, also used where constant columns are an error or are
  judged against the column's mean.
- :func:`cholesky_escalating` — Cholesky factors of batched, nearly singular
  regularised systems, refactored with a larger diagonal where they fail.
- :func:`block_rows` — how many rows of a batched computation to take at
  once so that its temporaries stay near :data:`BLOCK_FLOATS` numbers.

Example::

    >>> q = pca(embeddings, d=25)                    # [m, 25], mean 0, sd 1
"""

from __future__ import annotations

import torch

from ..errors import InputError, describe
from ..validation import as_float_tensor, check_int

__all__ = ["pca", "randomized_svd", "standardize", "standardize_columns", "pca_scores", "fix_signs",
           "uses_exact_svd", "N_ITER", "cholesky_escalating", "BLOCK_FLOATS", "block_rows", "canonical_correlation",
           "canonical_correlations"]

N_ITER = 4  # power iterations of the randomized range finder

# Small blocks are faster here, not only leaner: glibc serves allocations above 32 MiB with fresh ``mmap``
# pages, which the kernel must fault in and zero on every use. In ``benchmarks/blocks.py`` (one multiply
# into a new tensor) a number cost 11 times as much in temporaries of 33 to 128 MiB as in temporaries of
# 4 MiB, and 1.3 times in temporaries of 8 MiB.
BLOCK_FLOATS = 2 ** 20  # numbers per temporary: 8 MiB in float64, 4 MiB in float32


def block_rows(floats_per_row: int, budget: int = BLOCK_FLOATS) -> int:
    """Rows per block when one row's temporary holds ``floats_per_row`` numbers (at least 1)."""
    return max(1, budget // max(1, int(floats_per_row)))


# ----------------------------------------------------------------------------- standardization


def standardize_columns(t: torch.Tensor, *, eps: float = 1e-10, relative_to: str = "largest",
                        constant: str = "zero", name: str = "x") -> torch.Tensor:
    """Centre and scale the columns of ``t`` (along axis -2: ``[m, d]`` or ``[B, m, d]``) to mean 0 and sd 1.

    A column is constant when its standard deviation is at most ``eps`` times the largest column's
    (``relative_to="largest"``) or times ``1 + |its mean|`` (``relative_to="mean"``). Constant columns
    become zeros (``constant="zero"``) or raise :class:`InputError` naming ``name``
    (``constant="raise"``). Returns a new tensor.
    """
    mean = t.mean(-2, keepdim=True)
    sd = t.std(-2, unbiased=False, keepdim=True)
    if relative_to == "largest":
        ok = sd > eps * sd.amax(-1, keepdim=True).clamp_min(1e-300)
    else:
        ok = sd > eps * (1.0 + mean.abs())
    if constant == "raise" and not bool(ok.all()):
        cols = torch.nonzero(~ok.reshape(-1, ok.shape[-1]).all(0)).flatten().tolist()[:10]
        raise InputError(f"{name} must have non-constant columns; received constant column(s) {cols}")
    return torch.where(ok, (t - mean) / torch.where(ok, sd, torch.ones_like(sd)), torch.zeros_like(t))


def standardize(x, *, eps: float = 1e-10):
    """Centre and scale columns (along axis -2, so ``[m, d]`` or ``[B, m, d]``) to mean 0 and sd 1.

    Columns whose standard deviation is below ``eps`` times the largest
    column's are set to zero instead of being blown up. Returns a new
    tensor (torch in, torch out; numpy in, numpy out).
    """
    is_numpy = not isinstance(x, torch.Tensor)
    out = standardize_columns(as_float_tensor("x", x, ndims=(2, 3)), eps=eps)
    return out.numpy() if is_numpy else out


# ----------------------------------------------------------------------------- PCA


def uses_exact_svd(m: int, D: int, d: int) -> bool:
    """:func:`pca`'s default choice between the exact and the randomized SVD of an ``[m, D]`` matrix."""
    return not (d + 10 < min(m, D) / 2)


def pca(x, d: int = 25, *, seed: int = 0, n_iter: int = N_ITER, exact: bool | None = None):
    """Top-``d`` principal components of ``x`` (rows are samples), centred and scaled to unit variance.

    Args:
        x: ``[m, D]`` or batched ``[B, m, D]`` (numpy or torch).
        d: number of components; if ``d >= D`` the centred, scaled columns
            are returned unrotated (``D`` of them).
        seed: seed of the randomized range finder (a local generator; the
            global RNG is not touched).
        n_iter: power iterations of the range finder.
        exact: full SVD (``True``) or randomized (``False``); by default
            randomized when ``d + 10 < min(m, D) / 2``.

    Returns:
        ``[m, d']`` or ``[B, m, d']`` with ``d' = min(d, D)``; each column has
        mean 0 and standard deviation 1 (components with no variance, when
        ``rank < d``, are zeros). Signs are fixed so that each component's
        largest-magnitude loading is positive.
    """
    is_numpy = not isinstance(x, torch.Tensor)
    check_int("d", d, minimum=1, expected="a positive int")
    t = as_float_tensor("x", x, ndims=(2, 3))
    batched = t.ndim == 3
    t = t if batched else t.unsqueeze(0)
    m, D = t.shape[-2:]
    if m < 2:
        raise InputError(f"x must have at least 2 rows; received {describe(x)}")
    t = t - t.mean(-2, keepdim=True)
    if d >= D:
        out = standardize_columns(t)
    else:
        use_exact = exact if exact is not None else uses_exact_svd(m, D, d)
        scores = _pca_exact(t, d) if use_exact else _pca_randomized(t, d, seed, n_iter)
        out = standardize_columns(scores)
    out = out if batched else out[0]
    return out.numpy() if is_numpy else out


def pca_scores(t: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """Unscaled principal component scores ``[m, min(d, D)]`` of a 2-d tensor (signs fixed as in :func:`pca`)."""
    t = t - t.mean(0, keepdim=True)
    m, D = t.shape
    if d >= D:
        return t
    if not uses_exact_svd(m, D, d):
        return _pca_randomized(t.unsqueeze(0), d, seed, N_ITER)[0]
    return _pca_exact(t, d)


def fix_signs(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Flip components so that the largest loading (column of V) is positive."""
    idx = V.abs().argmax(-2, keepdim=True)
    sign = torch.sign(torch.gather(V, -2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign


def _pca_exact(t: torch.Tensor, d: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(t, full_matrices=False)
    return fix_signs(U[..., :d] * S[..., None, :d], Vh[..., :d, :].transpose(-1, -2))


def _pca_randomized(t: torch.Tensor, d: int, seed: int, n_iter: int) -> torch.Tensor:
    B, m, D = t.shape
    U, S, V = randomized_svd(lambda W: t @ W, lambda Y: (Y.transpose(-1, -2) @ t).transpose(-1, -2), D, d,
                             seed=seed, n_iter=n_iter, dtype=t.dtype, device=t.device,
                             project=lambda Q: Q.transpose(-1, -2) @ t)
    return fix_signs(U * S[..., None, :], V)


def randomized_svd(matmul, rmatmul, D: int, d: int, *, seed: int, n_iter: int, dtype, device=None, project=None):
    """Top-``d`` SVD of a batch of ``[m, D]`` matrices ``t`` seen only through products (Halko et al. 2011).

    ``matmul(W)`` must return ``t @ W`` (``W`` ``[D, k]`` or ``[B, D, k]``, result
    ``[B, m, k]``) and ``rmatmul(Y)`` ``t^T @ Y`` (``[B, D, k]``), so ``t`` may live
    in memory or be streamed from disk. The test matrix is drawn from a local
    generator seeded with ``seed`` and shared by the whole batch. ``project(Q)``
    (``Q^T @ t``, ``[B, k, D]``) defaults to ``rmatmul(Q)`` transposed. Returns
    ``(U [B, m, d], S [B, d], V [B, D, d])``; signs are not fixed.
    """
    gen = torch.Generator(device=device).manual_seed(int(seed))
    k = min(d + 10, D)
    omega = torch.randn(D, k, generator=gen, dtype=dtype, device=device)
    Y = matmul(omega)
    for _ in range(n_iter):
        Y, _ = torch.linalg.qr(Y)
        Y, _ = torch.linalg.qr(rmatmul(Y))
        Y = matmul(Y)
    Qm, _ = torch.linalg.qr(Y)  # [B, m, k]
    small = project(Qm) if project is not None else rmatmul(Qm).transpose(-1, -2)  # Qm^T t: [B, k, D]
    Us, S, Vh = torch.linalg.svd(small, full_matrices=False)
    U = Qm @ Us
    return U[..., :d], S[..., :d], Vh[..., :d, :].transpose(-1, -2)


# ----------------------------------------------------------------------------- Cholesky


def cholesky_escalating(A: torch.Tensor, diagonals) -> tuple:
    """Factor ``A + diag(d)`` [B, p, p] with ``d = diagonals[0]`` [B, p], then the next ``d`` where it failed.

    The Newton solver of entropy balancing and the outcome model's ridge both factor batches of nearly
    singular systems; only the problems whose factorization failed are refactored. Returns ``(L, info)``
    as :func:`torch.linalg.cholesky_ex`: ``info > 0`` marks the problems that failed with every diagonal.
    """
    diagonals = iter(diagonals)
    L, info = torch.linalg.cholesky_ex(A + torch.diag_embed(next(diagonals)))
    for d in diagonals:
        bad = torch.nonzero(info > 0).flatten()
        if bad.numel() == 0:
            break
        L[bad], info[bad] = torch.linalg.cholesky_ex(A[bad] + torch.diag_embed(d[bad]))
    return L, info


# ----------------------------------------------------------------------------- canonical correlation


def _basis(t: torch.Tensor, tol: float) -> torch.Tensor:
    """Orthonormal basis of the column space of centred ``t`` [..., m, p]; directions below ``tol`` x the largest
    singular value are dropped (their columns zeroed)."""
    U, S, _ = torch.linalg.svd(t - t.mean(-2, keepdim=True), full_matrices=False)
    keep = S > tol * S.amax(-1, keepdim=True).clamp_min(1e-300)
    return U * keep.unsqueeze(-2)


def canonical_correlation(a: torch.Tensor, b: torch.Tensor, given: torch.Tensor | None = None, *,
                          tol: float = 1e-8) -> torch.Tensor:
    """Largest canonical correlation between ``a`` [m, p] and each ``b`` [B, m, r] (given ``given`` [m, k]).

    With ``given``, both sides are first residualized on it (least squares): the partial canonical
    correlation. 1 means some combination of ``b``'s columns is a linear function of ``a``'s (and ``given``);
    0 also when ``b`` is constant. Returns ``[B]`` float64 in ``[0, 1]``.

    For jointly Gaussian ``(a, b)`` with canonical correlations ``rho_k``, the stabilized weights
    ``f(a) f(b) / f(a, b)`` have a finite variance only when every ``rho_k < 1/2`` (then
    ``E[w^2] = prod_k (1 - rho_k^2) / sqrt(1 - 4 rho_k^2)``): the number measures how far a node's value
    is from being determined by the query, i.e. overlap.
    """
    rho = canonical_correlations(a, b, given, tol=tol)
    return rho[:, 0] if rho.shape[1] else torch.zeros(rho.shape[0], dtype=torch.float64)


def canonical_correlations(a: torch.Tensor, b: torch.Tensor, given: torch.Tensor | None = None, *,
                           tol: float = 1e-8) -> torch.Tensor:
    """Every canonical correlation between ``a`` [m, p] and each ``b`` [B, m, r] (given ``given``), largest first.

    Returns ``[B, min(rank a, rank b)]`` float64 in ``[0, 1]`` (no columns when either side is constant);
    :func:`canonical_correlation` is its first column.
    """
    a = a.double()
    b = b.double() if b.ndim == 3 else b.double().unsqueeze(0)
    if given is not None:
        g = _basis(given.double(), tol)
        a = a - g @ (g.transpose(-1, -2) @ (a - a.mean(0)))
        b = b - g @ (g.transpose(-1, -2) @ (b - b.mean(-2, keepdim=True)))
    Ua = _basis(a, tol)
    Ub = _basis(b, tol)
    M = Ua.transpose(-1, -2).unsqueeze(0) @ Ub  # [B, p, r]
    if M.shape[-1] == 0 or M.shape[-2] == 0:
        return torch.zeros(M.shape[0], 0, dtype=torch.float64)
    return torch.linalg.svdvals(M).clamp(0.0, 1.0)
