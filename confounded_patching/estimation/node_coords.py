"""Node coordinates for the AIE estimator, from arrays in memory or streamed from an activation store.

:func:`~.aie.aie_many` reduces each node's activations ``[m, D]`` to
``d_n`` principal components, centred and scaled (:func:`~.linalg.pca`), a
chunk of nodes at a time, and solves that chunk's entropy-balancing
problems before it reads the next. Where the activations come from is a
node source:

- :class:`ArrayNodes`: a list of ``[m, D_i]`` arrays or an ``[n_nodes, m, D]``
  array in memory (the chunk is stacked in float64, as before);
- :class:`StoreNodes`: an :class:`~confounded_patching.activations.store.ActivationStore` on disk. Only the
  chunk's tensors are read from each shard, so memory is bounded by the
  chunk, never by ``m x n_nodes x d_model``.

Streamed PCA computes what :func:`~.linalg.pca` computes on the stacked
chunk, by the same code path:

- ``D <= d_n`` (no PCA) or :func:`~.linalg.pca`'s exact branch
  (``d_n + 10 >= min(m, D) / 2``, e.g. SmolLM2's 64-wide heads at
  ``d_n = 25``): the chunk's activations are read into ``[B, m, D]`` — small
  there, since ``D <= 2 d_n + 20`` or ``m <= 2 d_n + 20`` — and handed to the
  in-memory code: identical results.
- otherwise (e.g. 576-wide MLP and residual nodes): the seeded randomized
  range finder (:func:`~.linalg.randomized_svd`) runs with its products
  ``t @ W`` and ``t^T @ Y`` accumulated shard by shard over the centred
  activations ``t``. That is one pass over the shards for the means and
  ``2 n_iter + 2 = 10`` for the products, holding ``[B, m, d_n + 10]`` and
  ``[B, D, d_n + 10]`` plus one shard's ``[B, batch, D]``. The operations
  are those of the in-memory path; only the order of the sums over prompts
  differs, so coordinates agree to float64 rounding (about 1e-12, see
  ``tests/test_node_coords.py``).

Example::

    >>> src = node_source(store.select(nodes), m=len(store))   # or a list of arrays
    >>> src.widths[:3]
    [576, 64, 64]
    >>> n64 = src.coords([0], d=25, seed=0)                      # [1, m, 25] float64
"""

from __future__ import annotations

import numpy as np
import torch

from ..activations.store import ActivationStore
from ..errors import InputError, describe
from ..validation import as_matrix
from .linalg import (BLOCK_FLOATS, N_ITER, block_rows, fix_signs, pca, randomized_svd, standardize_columns,
                     uses_exact_svd)

__all__ = ["ArrayNodes", "StoreNodes", "node_source", "coords", "rescaled", "CONSTANT_SHARE"]


def _width(a) -> int:
    shape = getattr(a, "shape", None) or np.shape(a)
    return 1 if len(shape) == 1 else int(shape[-1])


#: a column whose standard deviation is at most this share of the array's largest |entry| is constant
CONSTANT_SHARE = 1e-9


def rescaled(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., m, D]`` divided by the power of 2 nearest its largest |entry| (per leading index), with
    constant columns set to their mean.

    Dividing by a power of 2 is exact, so the coordinates of ``c * x`` equal those of ``x`` for any ``c`` that
    is one, and agree to rounding for any other ``c``; it keeps sums of squares finite for entries near the
    float64 limits (``1e+-200``). A column whose standard deviation is at most :data:`CONSTANT_SHARE` of the
    largest |entry| carries no variation in this precision and is made exactly constant.
    """
    top = x.abs().amax((-2, -1), keepdim=True)
    scale = torch.where(top > 0, torch.exp2(torch.round(torch.log2(top.clamp_min(1e-308)))), torch.ones_like(top))
    t = x / scale
    mean = t.mean(-2, keepdim=True)
    flat = (t - mean).abs().amax(-2, keepdim=True) <= CONSTANT_SHARE * t.abs().amax((-2, -1), keepdim=True)
    return torch.where(flat, mean.expand_as(t), t)


def coords(x: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """Coordinates of ``x`` ``[..., m, D]``: PCA to ``d`` components when wider than ``d``, else its centred and
    scaled columns; computed from :func:`rescaled` ``x``, so scaling ``x`` leaves them unchanged and a constant
    ``x`` gives zeros."""
    x = rescaled(x)
    return pca(x, d, seed=seed) if x.shape[-1] > d else standardize_columns(x)


# ----------------------------------------------------------------------------- sources


class ArrayNodes:
    """Nodes held in memory: a list of ``[m, D_i]`` arrays or one ``[n_nodes, m, D]`` array."""

    def __init__(self, nodes, m: int):
        if isinstance(nodes, (np.ndarray, torch.Tensor)):
            if nodes.ndim == 2:
                nodes = nodes[None]
            if nodes.ndim != 3:
                raise InputError(f"nodes must be [n_nodes, prompts, dims] or a list of [prompts, dims]; "
                                 f"received {describe(nodes)}")
            if nodes.shape[1] != m:
                raise InputError(f"nodes must have one row per prompt ({m}, the length of outcome) on axis 1; "
                                 f"received {describe(nodes)}")
            items = [nodes[i] for i in range(nodes.shape[0])]
        elif not isinstance(nodes, (list, tuple)) or not nodes:
            raise InputError(f"nodes must be a non-empty list of [prompts, dims] arrays, an array "
                             f"[n_nodes, prompts, dims] or an ActivationStore; received {describe(nodes)}")
        else:
            items = list(nodes)
        self.items, self.m = items, m
        self.widths = [_width(a) for a in items]

    def __len__(self) -> int:
        return len(self.items)

    def coords(self, chunk, d: int, seed: int) -> torch.Tensor:
        """Coordinates ``[B, m, min(d, D)]`` (float64) of the nodes ``chunk`` (indices of equal width).

        The nodes are stacked a few at a time, so the float64 ``[run, m, D]`` stays a small temporary
        (:func:`~.linalg.block_rows`); each node's coordinates do not depend on the others of its run.
        """
        step = block_rows(self.m * self.widths[chunk[0]], 2 * BLOCK_FLOATS)
        out = []
        for s in range(0, len(chunk), step):
            acts = torch.stack([as_matrix(f"nodes[{i}]", self.items[i], self.m) for i in chunk[s:s + step]])
            out.append(coords(acts, d, seed))
        return torch.cat(out)


class StoreNodes:
    """The nodes of an :class:`~confounded_patching.activations.store.ActivationStore` (or a view made by its
    ``select``), streamed."""

    def __init__(self, store, m: int):
        store.check_complete("nodes")
        if store.n_prompts != m:
            raise InputError(f"nodes must have one row per prompt ({m}, the length of outcome); received an "
                             f"activation store of {store.n_prompts} prompts at {store.path}")
        self.store, self.m = store, m
        self.nodes = store.nodes
        self.widths = store.widths(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def _shards(self, nodes, check: bool = False):
        """``(prompt index [b], activations [B, b, D] float64)`` per shard, reading only ``nodes``."""
        for index, values in self.store.iter_chunks(nodes):
            X = torch.stack([values[n] for n in nodes]).to(torch.float64)
            if check and not torch.isfinite(X).all():
                bad = [n.label for n, x in zip(nodes, X) if not torch.isfinite(x).all()]
                raise InputError(f"nodes must be finite; the store at {self.store.path} holds NaN or inf for "
                                 f"node(s) {bad[:5]}")
            yield index, X

    def read(self, nodes) -> torch.Tensor:
        """The nodes' activations ``[B, m, D]`` (float64) in prompt order."""
        out = None
        for index, X in self._shards(nodes, check=True):
            if out is None:
                out = torch.empty(X.shape[0], self.m, X.shape[2], dtype=torch.float64)
            out[:, index] = X
        return out

    def coords(self, chunk, d: int, seed: int) -> torch.Tensor:
        """As :meth:`ArrayNodes.coords`, read shard by shard (see the module docstring)."""
        nodes = [self.nodes[i] for i in chunk]
        D = self.widths[chunk[0]]
        if D <= d or uses_exact_svd(self.m, D, d):
            return coords(self.read(nodes), d, seed)
        return standardize_columns(self._randomized_scores(nodes, D, d, seed))

    def _randomized_scores(self, nodes, D: int, d: int, seed: int) -> torch.Tensor:
        B, m = len(nodes), self.m
        total = torch.zeros(B, D, dtype=torch.float64)
        top = torch.zeros(B, 1, 1, dtype=torch.float64)
        for _, X in self._shards(nodes, check=True):
            total += X.sum(1)
            top = torch.maximum(top, X.abs().amax((1, 2), keepdim=True))
        # the power of 2 of :func:`rescaled`, so both paths compute on the same numbers
        scale = torch.where(top > 0, torch.exp2(torch.round(torch.log2(top.clamp_min(1e-308)))), torch.ones_like(top))
        mean = (total / m).unsqueeze(1) / scale  # [B, 1, D]

        def matmul(W):  # t @ W: [B, m, k]
            out = torch.empty(B, m, W.shape[-1], dtype=torch.float64)
            for index, X in self._shards(nodes):
                out[:, index] = (X / scale - mean) @ W
            return out

        def rmatmul(Y):  # t^T @ Y: [B, D, k]
            acc = torch.zeros(B, D, Y.shape[-1], dtype=torch.float64)
            for index, X in self._shards(nodes):
                acc += (X / scale - mean).transpose(-1, -2) @ Y[:, index]
            return acc

        U, S, V = randomized_svd(matmul, rmatmul, D, d, seed=seed, n_iter=N_ITER, dtype=torch.float64)
        return fix_signs(U * S[..., None, :], V)


def node_source(nodes, m: int):
    """:class:`StoreNodes` for an :class:`~confounded_patching.activations.store.ActivationStore`, else
    :class:`ArrayNodes`."""
    if isinstance(nodes, ActivationStore):
        return StoreNodes(nodes, m)
    return ArrayNodes(nodes, m)
