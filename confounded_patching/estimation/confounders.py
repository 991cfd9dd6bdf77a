"""The confounder: k-means topics of the query embeddings, topic labels, or continuous covariates.

The estimator balances a confounder ``x`` alongside the query: topics from
k-means on the prompts' embeddings (:func:`kmeans_topics`), user labels
(one indicator column per topic but the first, :func:`one_hot`), or
continuous covariates. :func:`confounder_features` turns any of them into
the standardized matrix the estimator balances; :func:`is_labels` decides
which of the two kinds an array is.

Example::

    >>> labels = kmeans_topics(embeddings, k=3)      # [m] ints in 0..2
    >>> x, names = one_hot(labels)                   # [m, 2], ['1', '2']
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.cluster.vq import ClusterError, kmeans2

from ..errors import InputError, describe
from ..validation import as_float_tensor, check_choice, check_int
from .linalg import pca_scores

__all__ = ["kmeans_topics", "one_hot", "confounder_features", "is_labels", "CONFOUNDER_KINDS"]

CONFOUNDER_KINDS = ["auto", "labels", "covariates"]
#: topics with fewer prompts than this get a warning: the adjustment for them rests on those few prompts
MIN_TOPIC_PROMPTS = 5


def is_labels(confounder, kind: str = "auto") -> bool:
    """Whether ``confounder`` is read as topic labels: ``kind="labels"``, or, with ``kind="auto"``, a vector
    of integers, strings or booleans (float arrays are covariates)."""
    if kind != "auto":
        return kind == "labels"
    arr = np.asarray(confounder.detach().cpu() if isinstance(confounder, torch.Tensor) else confounder)
    return arr.ndim == 1 and arr.dtype.kind in "iubUSO"


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
    check_int("k", k, minimum=2, expected="an int >= 2")
    t = as_float_tensor("x", x, ndims=(2,), dtype=torch.float64)
    m = t.shape[0]
    if m < 2 * k:
        raise InputError(f"x must have at least 2 * k = {2 * k} rows for k = {k} topics; received {describe(x)}")
    data = pca_scores(t, d, seed) if d is not None else t - t.mean(0)
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


def one_hot(labels, *, drop_first: bool = True, name: str = "labels"):
    """Indicator columns of ``labels`` (strings, ints or bools), the first category dropped.

    Returns:
        ``(X, categories)``: ``X`` is a float64 numpy array ``[m, k - 1]``
        (``[m, k]`` with ``drop_first=False``) and ``categories`` the sorted
        category names (as strings) of its columns. ``name``: the argument named in errors.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-d; received {describe(labels)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{name} must not contain NaN or inf; received {describe(labels)}")
    elif arr.dtype == object and any(v is None or (isinstance(v, float) and v != v) for v in arr):
        raise InputError(f"{name} must not contain None or NaN; received {describe(labels)}")
    cats, codes = np.unique(arr.astype(str) if arr.dtype == object else arr, return_inverse=True)
    if len(cats) < 2:
        raise InputError(f"{name} must contain at least 2 distinct topics; received {len(cats)} ({cats.tolist()})")
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
    check_choice("confounder_kind", kind, CONFOUNDER_KINDS)
    if confounder is None:
        return None, []
    if isinstance(confounder, torch.Tensor):
        confounder = confounder.detach().cpu().numpy()
    arr = np.asarray(confounder)
    if arr.ndim == 0 or arr.ndim > 2:
        raise InputError(f"confounder must be labels [m] or covariates [m, k]; received {describe(confounder)}")
    if arr.shape[0] != m:
        raise InputError(f"confounder must have one entry per prompt ({m}); received {describe(confounder)}")
    if is_labels(arr, kind):
        X, names = one_hot(arr, name="confounder")
        cats, counts = np.unique(arr.astype(str) if arr.dtype == object else arr, return_counts=True)
        small = [(str(c), int(n)) for c, n in zip(cats, counts) if n < MIN_TOPIC_PROMPTS]
        if small:
            warnings.warn(f"confounder: {len(small)} topic(s) have fewer than {MIN_TOPIC_PROMPTS} prompts "
                          f"({', '.join(f'{c!r}: {n}' for c, n in small[:5])}); balancing the query against such a "
                          f"topic rests on those prompts alone, and a topic of 1 prompt cannot be balanced. Merge "
                          f"rare topics or drop their prompts", stacklevel=3)
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
