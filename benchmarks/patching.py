"""Patching sweep speed on SmolLM2-135M: ours versus transformer_lens.patching, and attribution.

The same nodes and pairs for both: residual stream (resid_pre) and MLP output
at the last 8 positions, and every head at all positions, for IOI-style pairs
(clean: "... John gave a drink to" → " Mary"; corrupt: names swapped).
transformer_lens.patching runs one forward per node (all pairs in the batch);
``cp.patch`` batches (pair, node) rows, ``batch_size`` per forward, with
logits_to_keep=1 and (by default) starts each patched row at its node's layer
from the cached unpatched residual stream; ``--no-prefix`` times it without.
Prints times, ratios, the largest difference between the two (they must
agree), and the Pearson correlation of attribution patching with exact
patching. Variants are interleaved round by round (order reversed every other
round); ratios are of the per-variant medians.

    python benchmarks/patching.py [--pairs 4] [--positions 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import os

import _common  # noqa: F401
import numpy as np
import torch

import confounded_patching as cp
from confounded_patching.models.smollm2 import load_hf

NAMES = [("Mary", "John"), ("Anna", "Tom"), ("Sarah", "David"), ("Emma", "James"), ("Lucy", "Mark"),
         ("Kate", "Paul")]
TEMPLATE = "When {a} and {b} went to the store, {b} gave a drink to"


def pairs(tok, n):
    clean, corrupt, answers = [], [], []
    for a, b in NAMES[:n]:
        clean.append(TEMPLATE.format(a=a, b=b))
        corrupt.append(TEMPLATE.format(a=b, b=a))
        answers.append((f" {a}", f" {b}"))
    ids_c = torch.tensor([tok(p)["input_ids"] for p in clean])
    ids_x = torch.tensor([tok(p)["input_ids"] for p in corrupt])
    return ids_c, ids_x, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=96)
    ap.add_argument("--positions", type=int, default=8, help="residual and MLP nodes at the last P positions")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    _common.setup_threads()
    from transformer_lens import patching as tlp
    from transformer_lens.model_bridge import TransformerBridge

    model = cp.models.smollm2()
    hf, tok = load_hf()
    bridge = TransformerBridge.boot_transformers("smollm2", hf_model=copy.deepcopy(hf), tokenizer=tok, device="cpu")
    bridge.eval()
    clean, corrupt, answers = pairs(tok, args.pairs)
    S = clean.shape[1]
    # logit(correct) − logit(other) at the last position, with each pair's own names
    a_ids = torch.tensor([tok.encode(a)[0] for a, _ in answers])
    b_ids = torch.tensor([tok.encode(b)[0] for _, b in answers])
    tl_metric = lambda lg: (lg[:, -1, a_ids].diagonal() - lg[:, -1, b_ids].diagonal()).mean()
    n_layers, n_heads, P = 30, 9, args.positions
    positions = list(range(S - P, S))  # the last P positions
    nodes = ([cp.Resid(l, p) for l in range(n_layers) for p in positions]
             + [cp.Head(l, h, None) for l in range(n_layers) for h in range(n_heads)]
             + [cp.MLP(l, p) for l in range(n_layers) for p in positions])
    print(f"SmolLM2-135M, {args.pairs} pairs of {S} tokens, {len(nodes)} nodes per pair "
          f"({n_layers}x{P} resid + {n_layers * n_heads} heads (all positions) + {n_layers}x{P} MLP, "
          f"last {P} positions), {torch.get_num_threads()} threads")
    import pandas as pd

    index = pd.DataFrame([(l, p) for l in range(n_layers) for p in positions], columns=["layer", "pos"])

    metric = cp.datasets.answer_logit_diff([a for a, _ in answers], [b for _, b in answers])

    def ours(prefix=True):
        return cp.patch(model, clean, corrupt, nodes, metric, batch_size=args.batch_size, progress=False,
                        prefix_cache=prefix).raw

    def attribution():
        return cp.patch(model, clean, corrupt, nodes, metric, method="attribution", progress=False).raw

    def theirs():
        _, cache = bridge.run_with_cache(clean)
        r = tlp.generic_activation_patch(bridge, corrupt, cache, tl_metric, tlp.layer_pos_patch_setter,
                                         "resid_pre", index_df=index)
        h = tlp.get_act_patch_attn_head_out_all_pos(bridge, corrupt, cache, tl_metric)
        m = tlp.generic_activation_patch(bridge, corrupt, cache, tl_metric, tlp.layer_pos_patch_setter,
                                         "mlp_out", index_df=index)
        return torch.cat([r.flatten(), h.flatten(), m.flatten()]).numpy()

    variants = {"tl": theirs, "ours": ours, "ours_no_prefix": lambda: ours(False), "attribution": attribution}
    times, out = {k: [] for k in variants}, {}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            t, out[name] = _common.timed(variants[name])
            times[name].append(t)
            print(f"  round {r + 1}: {name} {t:.1f} s", flush=True)
    t_tl, t_ours, t_attr, t_np = (float(np.median(times[k])) for k in ("tl", "ours", "attribution",
                                                                       "ours_no_prefix"))
    tl, raw, attr = out["tl"], out["ours"], out["attribution"]
    diff = np.abs(raw.mean(0) - tl).max()
    diff_np = np.abs(out["ours_no_prefix"] - raw).max()
    print(f"transformer_lens.patching: {t_tl:.1f} s")
    print(f"cp.patch (exact):          {t_ours:.1f} s   speed-up vs TL: {t_tl / t_ours:.2f}x (target >= 3x)")
    print(f"cp.patch (exact, no prefix cache): {t_np:.1f} s   speed-up vs TL: {t_tl / t_np:.2f}x; prefix cache "
          f"gain {t_np / t_ours:.2f}x; max |with − without| {diff_np:.1e}")
    print(f"cp.patch (attribution):    {t_attr:.1f} s   speed-up vs exact: {t_ours / t_attr:.1f}x, vs TL: "
          f"{t_tl / t_attr:.1f}x")
    print(f"max |ours − TL| of the mean over pairs: {diff:.2e} (metric range {np.ptp(tl):.2f})")
    nr = n_layers * P
    for name, sl in (("resid", slice(0, nr)), ("heads", slice(nr, nr + 270)), ("mlp", slice(nr + 270, None)),
                     ("all", slice(None))):
        r = np.corrcoef(attr[:, sl].ravel(), raw[:, sl].ravel())[0, 1]
        print(f"attribution vs exact, Pearson r ({name}): {r:.3f}")


if __name__ == "__main__":
    main()
