"""First-order resample AIE of every node versus one plain forward pass, on SmolLM2-135M.

``cp.resample(model, prompts, nodes, metric, method="attribution", n_pairs="all")``
of all 540 nodes (30 MLPs and 270 heads at the last position, the residual
stream at the last 8 positions of 30 layers): one forward and one backward
pass per prompt give every node's AIE against every donor. Compared with a
plain HF forward over the same prompts, in the same batches (sorted by token
length, as the library batches them; ``logits_to_keep=1``, no gradients),
target <= 3.5x (forward + backward is about 3x), and with the exact resample
AIE at ``--pairs`` pairs. The exact sweep is timed on every
``--exact-stride``-th node (all kinds and layers) and extrapolated linearly
to the 540 nodes: its cost is one patched row per pair and node.

Variants are interleaved round by round (order reversed every other round);
ratios are of the per-variant medians.

    python benchmarks/attribution_aie.py [--prompts 1000] [--batch-size 64] [--rounds 2] [--pairs 32]
"""

from __future__ import annotations

import argparse
import statistics

import _common  # noqa: F401  (environment first)
import torch

import confounded_patching as cp
from confounded_patching.models.smollm2 import load_hf
from confounded_patching.models.tokens import encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=32, help="pairs of the exact resample AIE")
    ap.add_argument("--exact-stride", type=int, default=10, help="time exact on every k-th node, extrapolate")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    _common.setup_threads(args.threads)
    model = cp.models.smollm2()
    plain, tok = load_hf()
    texts = _common.prompts(args.prompts)
    nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,)) + cp.nodes(model, kinds=("resid",),
                                                                             positions=tuple(range(-1, -9, -1)))
    sub = nodes[::args.exact_stride]
    metric = cp.metrics.logit_diff(" he", " she")
    order = sorted(range(len(texts)), key=lambda i: len(tok.encode(texts[i])))
    batches = [[texts[i] for i in order[k:k + args.batch_size]] for k in range(0, len(order), args.batch_size)]
    print(f"SmolLM2-135M, {len(texts)} prompts, batch {args.batch_size}, {len(nodes)} nodes (30 MLP + 270 heads "
          f"at -1, residual at 8 positions), exact on {len(sub)} of them x {args.pairs} pairs, "
          f"{torch.get_num_threads()} threads")

    def run_plain():
        with torch.no_grad():
            for texts_b in batches:
                b = encode(texts_b, tok)
                plain(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                      logits_to_keep=1, use_cache=False)

    def run_attribution():
        return cp.resample(model, texts, nodes, metric, method="attribution", n_pairs="all",
                           batch_size=args.batch_size, progress=False)

    def run_exact():
        return cp.resample(model, texts, sub, metric, method="exact", n_pairs=args.pairs,
                           batch_size=args.batch_size, progress=False)

    variants = {"plain forward": run_plain, "attribution, every donor": run_attribution,
                f"exact, {args.pairs} pairs, {len(sub)} nodes": run_exact}
    run_plain()  # warm up
    times = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            t, out = _common.timed(variants[name])
            times[name].append(t)
            print(f"  round {r + 1}: {name} {t:.1f} s", flush=True)
    names = list(variants)
    for r in range(args.rounds):
        a, p = times[names[1]][r], times[names[0]][r]
        print(f"  round {r + 1}: attribution / plain forward = {a / p:.2f}x, exact (extrapolated) / attribution = "
              f"{times[names[2]][r] * len(nodes) / len(sub) / a:.1f}x")
    t_plain, t_attr, t_sub = (statistics.median(v) for v in times.values())
    t_exact = t_sub * len(nodes) / len(sub)
    print(f"plain forward:               {t_plain:.1f} s")
    print(f"attribution AIE, every donor: {t_attr:.1f} s   ratio to the plain forward: {t_attr / t_plain:.2f}x "
          f"(target <= 3.5x)")
    print(f"exact resample, {args.pairs} pairs:   {t_sub:.1f} s on {len(sub)} nodes, {t_exact:.0f} s extrapolated "
          f"to {len(nodes)} nodes; ratio to attribution {t_exact / t_attr:.1f}x, to the plain forward "
          f"{t_exact / t_plain:.1f}x")


if __name__ == "__main__":
    main()
