"""Low-dimensional treatment and node coordinates, and topic confounders.

The deconfounded estimator (Fotouhi et al., arXiv 2412.02893) works with a
prompt's query embedding ``q`` reduced by PCA to ``d_q`` components, a
node's activation ``n`` reduced to ``d_n`` components, and a confounder
``x``: topics from k-means on the embeddings, user labels, or continuous
covariates. All coordinates are centred and scaled to unit variance.

- ``pca(x, d)``: centred and scaled principal components in torch, batched
  over a leading axis, by a seeded randomized range finder (Halko,
  Martinsson & Tropp 2011) when ``d`` is much smaller than the width.
- ``standardize(x)``: mean 0, standard deviation 1 per column; constant
  columns become zeros.
- ``kmeans_topics(x, k)``: k-means labels (``scipy.cluster.vq.kmeans2``,
  k-means++ start, seeded).
- ``one_hot(labels)``: indicator columns with the first category dropped.
- ``confounder_features(confounder, m)``: the matrix the estimator balances.

Example::

    >>> q = pca(embeddings, d=25)                    # [m, 25], mean 0, sd 1
    >>> labels = kmeans_topics(embeddings, k=3)      # [m] ints in 0..2
    >>> x, names = one_hot(labels)                   # [m, 2], ['1', '2']
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError, describe

__all__ = ["pca", "randomized_svd", "standardize", "kmeans_topics", "one_hot", "confounder_features"]


def _float_tensor(name: str, x, ndims, dtype=torch.float64) -> torch.Tensor:
    """A float tensor view or copy of ``x`` (``dtype=None`` keeps a torch input's float dtype)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype.is_complex or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64, torch.bool)):
            raise InputError(f"{name} must be a numeric tensor; received {describe(x)}")
        if dtype is not None or not t.dtype.is_floating_point:
            t = t.to(dtype or torch.float64)
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"{name} must be a numeric array; received {describe(arr)}")
        t = torch.from_numpy(np.array(arr, dtype=np.float64)).to(dtype or torch.float64)
    if t.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise InputError(f"{name} must be {want}; received {describe(x)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite; received {describe(x)} with NaN or inf entries")
    return t


def standardize(x, *, eps: float = 1e-10):
    """Centre and scale columns (along axis -2, so ``[m, d]`` or ``[B, m, d]``) to mean 0 and sd 1.

    Columns whose standard deviation is below ``eps`` times the largest
    column's are set to zero instead of being blown up. Returns a new
    tensor (torch in, torch out; numpy in, numpy out).
    """
    is_numpy = not isinstance(x, torch.Tensor)
    t = _float_tensor("x", x, (2, 3), dtype=torch.float64 if is_numpy else None)
    out = _standardize(t, eps)
    return out.numpy() if is_numpy else out


def _standardize(t: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    mean = t.mean(-2, keepdim=True)
    sd = t.std(-2, unbiased=False, keepdim=True)
    ok = sd > eps * sd.amax(-1, keepdim=True).clamp_min(1e-300)
    return torch.where(ok, (t - mean) / torch.where(ok, sd, torch.ones_like(sd)), torch.zeros_like(t))


def pca(x, d: int = 25, *, seed: int = 0, n_iter: int = 4, exact: bool | None = None):
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
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise InputError(f"d must be a positive int; received {describe(d)}")
    t = _float_tensor("x", x, (2, 3), dtype=torch.float64 if is_numpy else None)
    batched = t.ndim == 3
    t = t if batched else t.unsqueeze(0)
    m, D = t.shape[-2:]
    if m < 2:
        raise InputError(f"x must have at least 2 rows; received {describe(x)}")
    t = t - t.mean(-2, keepdim=True)
    if d >= D:
        out = _standardize(t)
    else:
        use_exact = exact if exact is not None else not (d + 10 < min(m, D) / 2)
        scores = _pca_exact(t, d) if use_exact else _pca_randomized(t, d, seed, n_iter)
        out = _standardize(scores)
    out = out if batched else out[0]
    return out.numpy() if is_numpy else out


def _pca_scores(t: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """Unscaled principal component scores ``[m, min(d, D)]`` of a 2-d tensor."""
    t = t - t.mean(0, keepdim=True)
    m, D = t.shape
    if d >= D:
        return t
    if d + 10 < min(m, D) / 2:
        return _pca_randomized(t.unsqueeze(0), d, seed, 4)[0]
    return _pca_exact(t, d)


def _fix_signs(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Flip components so that the largest loading (column of V) is positive."""
    idx = V.abs().argmax(-2, keepdim=True)
    sign = torch.sign(torch.gather(V, -2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign


def _pca_exact(t: torch.Tensor, d: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(t, full_matrices=False)
    return _fix_signs(U[..., :d] * S[..., None, :d], Vh[..., :d, :].transpose(-1, -2))


def _pca_randomized(t: torch.Tensor, d: int, seed: int, n_iter: int) -> torch.Tensor:
    B, m, D = t.shape
    U, S, V = randomized_svd(lambda W: t @ W, lambda Y: (Y.transpose(-1, -2) @ t).transpose(-1, -2), D, d,
                             seed=seed, n_iter=n_iter, dtype=t.dtype, device=t.device,
                             project=lambda Q: Q.transpose(-1, -2) @ t)
    return _fix_signs(U * S[..., None, :], V)


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


def kmeans_topics(x, k: int = 3, *, seed: int = 0, d: int | None = 25, n_init: int = 5):
    """k-means topic labels of the rows of ``x`` (e.g. prompt embeddings).

    Args:
        x: ``[m, D]`` embeddings.
        k: number of topics (>= 2).
        seed: seed for ``scipy.cluster.vq.kmeans2`` (k-means++ start).
        d: cluster on the top-``d`` principal component scores, unwhitened so
            that distances keep their geometry (``None``: on the centred
            columns).
        n_init: restarts; the one with the smallest within-cluster sum of
            squares is kept.

    Returns:
        ``[m]`` int64 numpy array of labels in ``0..k-1``, relabelled so that
        topic 0 is the largest.
    """
    from scipy.cluster.vq import ClusterError, kmeans2

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"k must be an int >= 2; received {describe(k)}")
    t = _float_tensor("x", x, (2,))
    m = t.shape[0]
    if m < 2 * k:
        raise InputError(f"x must have at least 2 * k = {2 * k} rows for k = {k} topics; received {describe(x)}")
    data = _pca_scores(t, d, seed) if d is not None else t - t.mean(0)
    data = (data / data.std(unbiased=False).clamp_min(1e-300)).numpy()  # one common scale: keeps geometry
    n_distinct = len(np.unique(np.round(data, 12), axis=0))
    if n_distinct < k:
        raise InputError(f"x must have at least k = {k} distinct rows to form {k} topics; received {n_distinct}")
    best, best_inertia = None, np.inf
    rng = np.random.default_rng(seed)
    for _ in range(max(1, n_init)):
        try:
            cent, labels = kmeans2(data, k, minit="++", seed=rng, missing="raise")
        except ClusterError:  # an empty cluster: try the next start
            continue
        if len(np.unique(labels)) < k:
            continue
        inertia = float(((data - cent[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    if best is None:
        raise InputError(f"k-means found fewer than k = {k} non-empty topics in x; lower k")
    order = np.argsort(-np.bincount(best, minlength=k), kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    return relabel[best]


def one_hot(labels, *, drop_first: bool = True):
    """Indicator columns of ``labels`` (strings, ints or bools), the first category dropped.

    Returns:
        ``(X, categories)``: ``X`` is a float64 numpy array ``[m, k - 1]``
        (``[m, k]`` with ``drop_first=False``) and ``categories`` the sorted
        category names (as strings) of its columns.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be 1-d; received {describe(labels)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"labels must not contain NaN or inf; received {describe(labels)}")
    elif arr.dtype == object and any(v is None or (isinstance(v, float) and v != v) for v in arr):
        raise InputError(f"labels must not contain None or NaN; received {describe(labels)}")
    cats, codes = np.unique(arr.astype(str) if arr.dtype == object else arr, return_inverse=True)
    if len(cats) < 2:
        raise InputError(f"labels must contain at least 2 distinct topics; received {len(cats)} ({cats.tolist()})")
    X = np.zeros((arr.shape[0], len(cats)), dtype=np.float64)
    X[np.arange(arr.shape[0]), codes] = 1.0
    names = [str(c) for c in cats]
    if drop_first:
        X, names = X[:, 1:], names[1:]
    return X, names


def confounder_features(confounder, m: int, *, kind: str = "auto"):
    """The confounder as a standardized float matrix ``[m, k]``, or ``None``.

    Args:
        confounder: ``None``; topic labels ``[m]`` (strings, ints, bools);
            or continuous covariates ``[m, k]`` (or a float vector ``[m]``).
        m: number of prompts it must match.
        kind: ``"auto"`` (integer/string/bool vectors are labels, float
            arrays covariates), ``"labels"`` or ``"covariates"``.

    Returns:
        ``(X, names)`` with ``X`` centred and scaled (topic indicators with
        the first topic dropped, then standardized), or ``(None, [])``.
    """
    if kind not in ("auto", "labels", "covariates"):
        raise InputError(f"confounder_kind must be one of {{'auto', 'labels', 'covariates'}}; received {kind!r}")
    if confounder is None:
        return None, []
    if isinstance(confounder, torch.Tensor):
        confounder = confounder.detach().cpu().numpy()
    arr = np.asarray(confounder)
    if arr.ndim == 0 or arr.ndim > 2:
        raise InputError(f"confounder must be labels [m] or covariates [m, k]; received {describe(confounder)}")
    if arr.shape[0] != m:
        raise InputError(f"confounder must have one entry per prompt ({m}); received {describe(confounder)}")
    is_labels = kind == "labels" or (kind == "auto" and arr.ndim == 1 and arr.dtype.kind in "iubUSO")
    if is_labels:
        X, names = one_hot(arr)
    else:
        if arr.dtype.kind not in "iufb":
            raise InputError(f"confounder covariates must be numeric; received {describe(confounder)}")
        X = np.array(arr, dtype=np.float64).reshape(m, -1)
        if not np.isfinite(X).all():
            raise InputError(f"confounder must be finite; received {describe(confounder)} with NaN or inf entries")
        sd = X.std(0)
        if (sd <= 1e-12 * (1 + np.abs(X).max(0))).any():
            raise InputError(f"confounder covariates must not be constant; column(s) "
                             f"{np.nonzero(sd <= 1e-12 * (1 + np.abs(X).max(0)))[0].tolist()} are constant")
        names = [f"x{i}" for i in range(X.shape[1])]
    X = (X - X.mean(0)) / X.std(0)
    return X, names
