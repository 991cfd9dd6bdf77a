"""How many rows of a batched computation to take at once, so that its temporaries stay small.

Batched computations (nodes of a chunk, prompts of the pair sums) are cut
into blocks whose largest temporary holds about :data:`BLOCK_FLOATS`
numbers. Small blocks are faster here, not only leaner: glibc serves
allocations above 32 MiB with fresh ``mmap`` pages, which the kernel must
fault in and zero on every use, so a temporary of 64 MiB cost 5 to 10 times
the arithmetic done on it, while one of 8 MiB is reused from the heap
(``benchmarks/blocks.py``).
"""

from __future__ import annotations

__all__ = ["BLOCK_FLOATS", "block_rows"]

BLOCK_FLOATS = 2 ** 20  # numbers per temporary: 8 MiB in float64, 4 MiB in float32


def block_rows(floats_per_row: int, budget: int = BLOCK_FLOATS) -> int:
    """Rows per block when one row's temporary holds ``floats_per_row`` numbers (at least 1)."""
    return max(1, budget // max(1, int(floats_per_row)))
