"""Time and peak memory of the batched multi-node AIE (``aie_many``) on synthetic data shaped like real use.

Real use (docs/scale.md): every node of SmolLM2-135M (30 MLP + 270 heads +
240 residual = 540 nodes), query embeddings and activations reduced by PCA to
d = 25, K = 200 partners per prompt, m = 250 / 500 / 1000 prompts, 3 topics.
Activations here are synthetic (``raw_dim`` wide, a random mix of a
query-driven part, a topic part and noise), so only the shapes and the
solver's work are realistic.

Run (2 cores):  OMP_WAIT_POLICY=PASSIVE python benchmarks/eb_scaling.py [--nodes 540] [--m 250 500 1000]
Prints wall time, time per node, peak traced memory (tracemalloc: numpy and
Python objects) and peak RSS (resource, includes torch's allocator), and the
time ratios between consecutive m.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
import warnings

import numpy as np
import torch

from confounded_patching import aie_many


def synthetic(m: int, n_nodes: int, raw_dim: int = 64, d_q: int = 32, k: int = 3, seed: int = 0):
    """Query embeddings [m, 64], node activations [n_nodes, m, raw_dim] (float32), outcome [m], topics [m]."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, k, size=m)
    centres = rng.normal(size=(k, 64)) * 0.7
    query = (centres[topics] + rng.normal(size=(m, 64))).astype(np.float32)
    acts = np.empty((n_nodes, m, raw_dim), dtype=np.float32)
    tmix = rng.normal(size=(k, raw_dim))
    for b in range(n_nodes):
        strength = rng.uniform(0.0, 1.0)
        W = rng.normal(size=(64, raw_dim)) * strength / 8
        acts[b] = np.tanh(query @ W) + 0.5 * tmix[topics] * rng.uniform() + rng.normal(size=(m, raw_dim))
    y = (query[:, :4] * acts[0][:, :4]).sum(1) + 0.3 * acts[1, :, 0] + rng.normal(size=m)
    return query, acts, y.astype(np.float64), topics


def run(m: int, n_nodes: int, K: int, chunk_size: int, n_boot: int):
    query, acts, y, topics = synthetic(m, n_nodes)
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = aie_many(query, acts, y, topics, K=K, chunk_size=chunk_size, n_boot=n_boot)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    conv = sum(s == "converged" for s in table.status)
    return wall, peak / 2**20, rss, conv, table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=540)
    ap.add_argument("--m", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--K", type=int, default=200)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, nodes {args.nodes}, K {args.K}, "
          f"d_q = d_n = 25, chunk {args.chunk_size}, n_boot {args.n_boot}")
    print(f"{'m':>6} {'wall s':>8} {'ms/node':>8} {'peak traced MiB':>16} {'peak RSS MiB':>13} {'converged':>10} "
          f"{'median gamma':>13} {'median ESS/m':>13}")
    prev = None
    for m in args.m:
        wall, peak, rss, conv, table = run(m, args.nodes, args.K, args.chunk_size, args.n_boot)
        ratio = f"  x{wall / prev[1]:.2f} time for x{m / prev[0]:.1f} prompts" if prev else ""
        print(f"{m:>6} {wall:>8.1f} {1000 * wall / args.nodes:>8.1f} {peak:>16.0f} {rss:>13.0f} "
              f"{conv:>6}/{args.nodes:<3} {np.median(table.gamma):>13.3f} {np.median(table.ess) / m:>13.2f}{ratio}")
        prev = (m, wall)


if __name__ == "__main__":
    main()
