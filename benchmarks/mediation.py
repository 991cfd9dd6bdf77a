"""EB-AIE of every SmolLM2 node on up to 1,000 prompts: time and peak memory of the estimator stage.

Nodes: 30 MLP + 270 heads at the last position and the residual stream at the
last 8 positions of 30 layers (540 nodes). Prompts: the built-in professions
set (topics as the confounder, outcome logit(" he") − logit(" she")), each
after the sentence ``PREFIX`` so that every prompt has at least 8 tokens (the
shortest professions prompts have 4).

The capture runs once (its time is printed) into an activation store; then,
for each prompt count, a fresh subprocess loads that many prompts and runs
``cp.mediate`` (adjusted and unadjusted, the library defaults: γ rule, K = 200,
augmented, 200 bootstrap replicates), so its peak resident memory is its
own: the peak is reset after the activations are loaded (Linux), so "peak MB
above data" is what the estimator adds. Growth should be linear in prompts.

    python benchmarks/mediation.py [--sizes 250,500,1000] [--store /tmp/cp-bench-store]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import _common  # noqa: F401
import torch

import confounded_patching as cp


PREFIX = "Here is a sentence from a short story. "


def nodes_for(model):
    return (cp.nodes(model, kinds=("mlp", "head"), positions=(-1,))
            + cp.nodes(model, kinds=("resid",), positions=tuple(range(-1, -9, -1))))


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: ``5`` into /proc/self/clear_refs); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(store_dir: str, m: int, n_boot: int) -> None:
    import numpy as np

    store = cp.ActivationStore.open(store_dir)
    acts = store.load()
    sub = cp.Activations(nodes=acts.nodes, values=[v[:m].clone() for v in acts.values], lengths=acts.lengths[:m],
                         outcome=acts.outcome[:m], embedding=acts.embedding[:m], meta=acts.meta)
    topics = np.array(json.loads(os.environ["CP_BENCH_TOPICS"]))[:m]
    del acts
    gc.collect()
    base = _rss_mb("VmRSS")
    reset = _reset_peak()  # peak RSS from here on: the estimator's own memory above the resident data
    t0 = time.perf_counter()
    # the query: the captured residual stream, given as an array so that every node is estimated and only the
    # statistics core is timed (the default sentence encoder adds its embedding pass, ~10 s per 1,000 prompts)
    res = cp.mediate(None, None, outcome=cp.metrics.logit_diff(" he", " she"), confounder=topics,
                     activations=sub, query=sub.embedding, n_boot=n_boot, progress=False)
    dt = time.perf_counter() - t0
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    adj = res.adjusted
    print(json.dumps({"m": m, "seconds": dt, "peak_mb_above_data": peak - base, "peak_mb": peak,
                      "status": {s: adj.status.count(s) for s in set(adj.status)},
                      "median_ess": float(np.nanmedian(adj.ess)),
                      "median_pair_ess": float(np.nanmedian(adj.pair_ess[np.isfinite(adj.value)])),
                      "ess_x": float(np.asarray(adj.ess_x).ravel()[0]),
                      "reliable": int(np.sum(adj.reliable)), "augmented": bool(adj.augmented),
                      "unadjusted": {s: res.unadjusted.status.count(s) for s in set(res.unadjusted.status)}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250,500,1000")
    ap.add_argument("--store", default="/tmp/cp-bench-store")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _common.setup_threads()
    if args.worker is not None:
        return worker(args.store, args.worker, args.n_boot)
    sizes = [int(s) for s in args.sizes.split(",")]
    model = cp.models.smollm2()
    data = cp.datasets.professions(n=max(sizes), tokenizer=model.tokenizer)
    nodes = nodes_for(model)
    t0 = time.perf_counter()
    prompts = [PREFIX + p for p in data.prompts]
    store = cp.collect(model, prompts, nodes, metric=data.metric, embed_layer=7, batch_size=32,
                       store=args.store, progress=False)
    print(f"capture of {len(prompts)} prompts x {len(nodes)} nodes into {args.store}: "
          f"{time.perf_counter() - t0:.1f} s (0 s if the store was complete)")
    env = {**os.environ, "CP_BENCH_TOPICS": json.dumps(list(data.topics))}
    print(f"{'prompts':>8} {'seconds':>8} {'s/node':>7} {'peak MB above data':>19}  status (adjusted)")
    for m in sizes:
        out = subprocess.run([sys.executable, __file__, "--worker", str(m), "--store", args.store,
                              "--n-boot", str(args.n_boot)], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['m']:>8} {r['seconds']:>8.1f} {r['seconds'] / len(nodes):>7.3f} {r['peak_mb_above_data']:>19.0f}"
              f"  {r['status']}  median ESS {r['median_ess']:.0f}, topic model ESS {r['ess_x']:.0f},"
              f" median pair ESS of finite nodes {r['median_pair_ess']:.1e} of n*K; unadjusted {r['unadjusted']};"
              f" {r['reliable']} reliable; augmented {r['augmented']}")
    print("(both estimators, adjusted and unadjusted, for every node; 2 threads)")


if __name__ == "__main__":
    main()
