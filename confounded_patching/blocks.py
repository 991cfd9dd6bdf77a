"""How many rows of a batched computation to take at once, so that its temporaries stay small.

Batched computations (nodes of a chunk, prompts of the pair sums) are cut
into blocks whose largest temporary holds about :data:`BLOCK_FLOATS`
numbers. Small blocks are faster here, not only leaner: glibc serves
allocations above 32 MiB with fresh ``mmap`` pages, which the kernel must
fault in and zero on every use. In ``benchmarks/blocks.py`` (one multiply
into a new tensor) a number cost 11 times as much in temporaries of 33 to
128 MiB as in temporaries of 4 MiB, and 1.3 times in temporaries of 8 MiB.
"""

from __future__ import annotations

__all__ = ["BLOCK_FLOATS", "block_rows"]

BLOCK_FLOATS = 2 ** 20  # numbers per temporary: 8 MiB in float64, 4 MiB in float32


def block_rows(floats_per_row: int, budget: int = BLOCK_FLOATS) -> int:
    """Rows per block when one row's temporary holds ``floats_per_row`` numbers (at least 1)."""
    return max(1, budget // max(1, int(floats_per_row)))
