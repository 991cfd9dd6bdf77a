"""Cholesky factors of batched regularised systems, with a larger diagonal where the factorization fails.

The Newton solver of entropy balancing and the outcome model's ridge both
factor ``A + diag(d)`` for a batch of nearly singular ``A``; where a
problem's factorization fails, it is retried with the next, larger
diagonal, and only those problems are refactored.
"""

from __future__ import annotations

import torch

__all__ = ["cholesky_escalating"]


def cholesky_escalating(A: torch.Tensor, diagonals) -> tuple:
    """Factor ``A + diag(d)`` [B, p, p] with ``d = diagonals[0]`` [B, p], then the next ``d`` where it failed.

    Returns ``(L, info)`` as :func:`torch.linalg.cholesky_ex`: ``info > 0`` marks the problems that failed
    with every diagonal.
    """
    diagonals = iter(diagonals)
    L, info = torch.linalg.cholesky_ex(A + torch.diag_embed(next(diagonals)))
    for d in diagonals:
        bad = torch.nonzero(info > 0).flatten()
        if bad.numel() == 0:
            break
        L[bad], info[bad] = torch.linalg.cholesky_ex(A[bad] + torch.diag_embed(d[bad]))
    return L, info
