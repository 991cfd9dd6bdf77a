"""Why batched computations are cut into small blocks: the cost of a temporary grows with its size.

The same arithmetic (one multiply of ``N`` float32 numbers into a new
tensor, ``N`` = 2**26 in all) is done as temporaries of 1 to 128 MiB. Above
32 MiB glibc serves each allocation with fresh ``mmap`` pages that the
kernel must fault in and zero, so the time per number jumps;
``confounded_patching.estimation.linalg.BLOCK_FLOATS`` (4 MiB in float32, 8 MiB in
float64) keeps every hot temporary below that. Sizes are interleaved over
rounds and the ratio to the 4 MiB block is printed.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/blocks.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import _common
import torch

TOTAL = 2 ** 26  # numbers per measurement


def run(mib: int) -> float:
    n = mib * 2 ** 20 // 4
    x = torch.randn(n)
    t0 = time.perf_counter()
    for _ in range(TOTAL // n):
        y = x * x  # a new temporary of ``mib`` MiB each time
        del y
    return (time.perf_counter() - t0) / TOTAL * 1e9  # ns per number


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _common.setup_threads()
    sizes = (1, 4, 8, 16, 31, 33, 64, 128)
    times = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for s in sizes:
            times[s].append(run(s))
    base = sorted(times[4])[len(times[4]) // 2]
    print(f"{'MiB per temporary':>18} {'ns per number (median)':>23} {'ratio to 4 MiB':>15}")
    for s in sizes:
        med = sorted(times[s])[len(times[s]) // 2]
        print(f"{s:>18} {med:>23.3f} {med / base:>15.2f}")


if __name__ == "__main__":
    main()
