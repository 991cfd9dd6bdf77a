"""Large runs: SmolLM2 captured to an on-disk store and mediated from it, versus the in-memory path.

For each prompt count ``m`` (``--sizes``), three fresh subprocesses, so each
peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own:

1. capture: ``cp.collect(..., store=DIR)`` of the professions prompts (beyond
   their 2,160, again after lead-in phrases such as "Yesterday, "; outcome
   logit(" he") − logit(" she"), query embedding at layer 7) into
   ``{--root}/m{m}``; a complete store is reused, an interrupted one resumes;
2. store: ``cp.mediate(None, None, nodes, metric, store=DIR)`` — the EB
   stage reads the shards a chunk of nodes at a time;
3. memory: ``store.load()`` then ``cp.mediate(..., activations=acts)`` — the
   in-memory path, for comparison (``--no-memory`` skips it).

Both mediations use the professions topics as the confounder, the default
γ rule and K = 200, and must give the same estimates (the largest
difference is printed). Peak RSS is printed in total and above the
worker's RSS after imports. Nodes: MLP and heads at the last position and
the residual stream at the last 8 positions (fewer when a prompt is shorter:
professions prompts can be 4 tokens) of every ``--layer-stride``-th layer
(stride 1: 30 MLP + 270 heads + 30 x 4 or 8 residual nodes).

    python benchmarks/scale.py                                    # smoke run: m = 200, 400; 42 nodes
    python benchmarks/scale.py --sizes 1000,2000 --layer-stride 2 # a large run (see docs/scale.md)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (environment first: OMP_WAIT_POLICY=PASSIVE, offline)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _nodes(n_layers: int, n_heads: int, stride: int, kinds: list[str], n_pos: int = 8):
    import confounded_patching as cp

    layers = range(0, n_layers, stride)
    out = []
    for layer in layers:
        if "mlp" in kinds:
            out.append(cp.MLP(layer, -1))
        if "head" in kinds:
            out += [cp.Head(layer, h, -1) for h in range(n_heads)]
        if "resid" in kinds:
            out += [cp.Resid(layer, p) for p in range(-1, -n_pos - 1, -1)]
    return out


LEADS = ["", "Yesterday, ", "In the story, ", "Later that day, ", "At the meeting, ", "After lunch, ",
         "In the morning, ", "On the radio, ", "During the trip, ", "At the hospital, ", "In the village, "]


def prompt_set(cp, m: int, tokenizer):
    """m distinct prompts with topics: the professions set, then again after lead-in phrases (11 x 2,160)."""
    data = cp.datasets.professions(n=None, tokenizer=tokenizer)
    if m <= len(data):
        data = cp.datasets.professions(n=m, tokenizer=tokenizer)
        return list(data.prompts), list(data.topics)
    base = list(zip(data.prompts, data.topics))
    rows = list(dict(((lead + (p[0].lower() + p[1:] if lead else p)), t) for lead in LEADS for p, t in base).items())
    if m > len(rows):
        raise SystemExit(f"at most {len(rows)} distinct prompts; asked for {m}")
    order = __import__("numpy").random.default_rng(0).permutation(len(rows))[:m]
    return [rows[i][0] for i in order], [rows[i][1] for i in order]


def capture(args, m: int, store_dir: Path) -> dict:
    import confounded_patching as cp

    from confounded_patching.models.tokens import as_id_lists

    base = _rss_mb()  # before the model: the capture row's "above base" includes the model's weights
    model = cp.models.smollm2()

    prompts, topics = prompt_set(cp, m, model.tokenizer)
    shortest = min(len(ids) for ids in as_id_lists(prompts, model.tokenizer))
    nodes = _nodes(30, 9, args.layer_stride, args.kinds, n_pos=min(8, shortest))
    t0 = time.perf_counter()
    store = cp.collect(model, prompts, nodes, metric=cp.metrics.logit_diff(" he", " she"), embed_layer=7,
                       batch_size=args.batch_size, store=store_dir, progress=False)
    seconds = time.perf_counter() - t0
    (store_dir / "topics.json").write_text(json.dumps([str(t) for t in topics]))
    widths = store.widths()
    return {"seconds": seconds, "peak_mb": _rss_mb(), "base_mb": base, "n_nodes": len(nodes),
            "data_mb": m * sum(widths) * 4 / 2**20}


def mediate(args, m: int, store_dir: Path, mode: str) -> dict:
    import numpy as np

    import confounded_patching as cp

    store = cp.ActivationStore.open(store_dir)
    topics = np.array(json.loads((store_dir / "topics.json").read_text()))
    kw = dict(confounder=topics, K=args.K, n_boot=args.n_boot, chunk_size=args.chunk_size, progress=False)
    metric = cp.metrics.logit_diff(" he", " she")
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "store":
        res = cp.mediate(None, None, store.nodes, metric, store=store_dir, **kw)
    else:
        acts = store.load()
        res = cp.mediate(None, None, store.nodes, metric, activations=acts, **kw)
    seconds = time.perf_counter() - t0
    adj = res.adjusted
    return {"seconds": seconds, "peak_mb": _rss_mb(), "base_mb": base, "value": adj.value.tolist(),
            "status": {s: adj.status.count(s) for s in sorted(set(adj.status))}}


def _run(args, what: str, m: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", what, "--worker-m", str(m), "--root", args.root,
           "--layer-stride", str(args.layer_stride), "--kinds", ",".join(args.kinds), "--K", str(args.K),
           "--n-boot", str(args.n_boot), "--chunk-size", str(args.chunk_size), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:])
        raise SystemExit(out.returncode)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,400", help="prompt counts, comma-separated (default: a smoke run)")
    ap.add_argument("--layer-stride", type=int, default=10, help="every k-th layer's nodes (1: all 540)")
    ap.add_argument("--kinds", default="mlp,head,resid", type=lambda s: s.split(","))
    ap.add_argument("--root", default="/tmp/cp-scale", help="stores go to ROOT/m{m}")
    ap.add_argument("--K", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=50)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory comparison")
    ap.add_argument("--fresh", action="store_true", help="delete existing stores first")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-m", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _common.setup_threads()
    if args.worker is not None:
        store_dir = Path(args.root) / f"m{args.worker_m}"
        fn = capture if args.worker == "capture" else lambda a, m, d: mediate(a, m, d, args.worker)
        print(json.dumps(fn(args, args.worker_m, store_dir)))
        return
    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"SmolLM2-135M, professions prompts, layers 0..29 step {args.layer_stride}, kinds {args.kinds}, "
          f"K {args.K}, n_boot {args.n_boot}, chunk {args.chunk_size}, {torch.get_num_threads()} threads")
    header = f"{'m':>6} {'stage':<22} {'seconds':>8} {'peak MB':>8} {'above base':>11}  notes"
    print(header)
    for m in sizes:
        store_dir = Path(args.root) / f"m{m}"
        if args.fresh and store_dir.exists():
            shutil.rmtree(store_dir)
        cap = _run(args, "capture", m)
        print(f"{m:>6} {'capture -> store':<22} {cap['seconds']:>8.1f} {cap['peak_mb']:>8.0f} "
              f"{cap['peak_mb'] - cap['base_mb']:>11.0f}  {cap['n_nodes']} nodes, activations "
              f"{cap['data_mb']:.0f} MB (float32); 0 s if the store was complete")
        st = _run(args, "store", m)
        print(f"{m:>6} {'mediate from store':<22} {st['seconds']:>8.1f} {st['peak_mb']:>8.0f} "
              f"{st['peak_mb'] - st['base_mb']:>11.0f}  status {st['status']}")
        if not args.no_memory:
            mem = _run(args, "memory", m)
            diff = max((abs(a - b) for a, b in zip(st["value"], mem["value"]) if a == a and b == b), default=0.0)
            print(f"{m:>6} {'load + mediate in RAM':<22} {mem['seconds']:>8.1f} {mem['peak_mb']:>8.0f} "
                  f"{mem['peak_mb'] - mem['base_mb']:>11.0f}  max |AIE store - in memory| = {diff:.1e}")
        sys.stdout.flush()
    print("(peak MB: each worker's peak RSS; above base: minus its RSS after imports — before loading the model for "
          "the capture, after opening the store for the mediations)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
