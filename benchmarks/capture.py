"""Capture cost: collect() of every node versus a plain forward pass, on SmolLM2-135M.

Prints the ratio capture time / plain forward time for the same prompts,
batches and padding (target <= 1.1). Variants are interleaved round by round
so machine-load drift hits both equally; the median ratio is reported.

    python benchmarks/capture.py [--prompts 64] [--batch-size 16] [--rounds 3]
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
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    _common.setup_threads()
    model = cp.models.smollm2()
    plain, tok = load_hf()
    texts = _common.prompts(args.prompts)
    nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,)) + cp.nodes(model, kinds=("resid",),
                                                                             positions=tuple(range(-1, -9, -1)))
    print(f"SmolLM2-135M, {len(texts)} prompts, batch {args.batch_size}, {len(nodes)} nodes "
          f"(30 MLP + 270 heads at -1, residual at 8 positions), {torch.get_num_threads()} threads")

    def run_plain():
        with torch.no_grad():
            for i in range(0, len(texts), args.batch_size):
                b = encode(texts[i:i + args.batch_size], tok)
                plain(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                      logits_to_keep=1, use_cache=False)

    def run_capture():
        return cp.collect(model, texts, nodes, batch_size=args.batch_size, progress=False)

    run_plain(), run_capture()  # warm up
    ratios, tp, tc = [], [], []
    for r in range(args.rounds):
        a, _ = _common.timed(run_plain)
        b, acts = _common.timed(run_capture)
        tp.append(a), tc.append(b), ratios.append(b / a)
        print(f"round {r}: plain {a:.2f} s, capture {b:.2f} s, ratio {b / a:.3f}")
    print(f"median: plain {statistics.median(tp):.2f} s, capture {statistics.median(tc):.2f} s, "
          f"ratio capture/plain = {statistics.median(ratios):.3f}  (target <= 1.1)")
    assert acts[nodes[0]].shape[0] == len(texts)


if __name__ == "__main__":
    main()
