"""Attribution patching against exact classic patching, by node kind, on SmolLM2-135M.

The measurement behind ``cp.patch(method="auto")``'s per-kind choice
(:data:`confounded_patching.interventions.patching.AUTO`): on each built-in
dataset with clean/corrupt pairs, the pipeline's pairs (``--pairs`` of them,
drawn as ``confounded-patching demo`` draws them) are patched exactly and by
attribution for 30 MLPs and 270 heads at the last position and the residual
stream at the last three positions (390 nodes). Per kind: Spearman of
|score|, Pearson of the score, and the median over pairs of the per-pair
Spearman of the effects, plus the seconds of each method.

    python benchmarks/patch_auto.py [--datasets professions,capitals,ioi] [--pairs 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common  # noqa: F401  (environment first)
import numpy as np
from scipy import stats

import confounded_patching as cp
from confounded_patching import pipeline


def _agree(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    return (float(stats.spearmanr(np.abs(a[ok]), np.abs(b[ok]))[0]), float(stats.pearsonr(a[ok], b[ok])[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="professions,capitals,ioi")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "patch_auto.json"))
    args = ap.parse_args()
    model, tok = pipeline.load_model("smollm2")
    options = pipeline.Options(n_pairs=args.pairs)
    nodes = pipeline.select_nodes(model, options)
    rows = []
    for name in args.datasets.split(","):
        data = pipeline.load_dataset(name, tok, options.n_prompts, options.seed)
        pairs = data.subset(min(options.n_pairs, len(data)), options.seed + 1)
        got, secs = {}, {}
        for method in ("attribution", "exact"):
            t0 = time.perf_counter()
            got[method] = cp.patch(model, list(pairs.clean), list(pairs.corrupt), nodes, pairs.metric,
                                   tokenizer=tok, method=method, progress=False)
            secs[method] = time.perf_counter() - t0
        kinds = np.array([n.kind for n in nodes])
        for kind in ("head", "mlp", "resid"):
            sel = kinds == kind
            s, p = _agree(got["attribution"].score[sel], got["exact"].score[sel])
            per_pair = [float(stats.spearmanr(got["attribution"].effects[i, sel], got["exact"].effects[i, sel])[0])
                        for i in range(len(pairs))]
            rows.append(dict(dataset=name, kind=kind, nodes=int(sel.sum()), spearman_abs=s, pearson=p,
                             per_pair_spearman=float(np.nanmedian(per_pair)),
                             seconds_attribution=secs["attribution"], seconds_exact=secs["exact"]))
            print(f"{name:12s} {kind:6s} {int(sel.sum()):4d} nodes  Spearman|s| {s:5.2f}  Pearson {p:5.2f}  "
                  f"per-pair {rows[-1]['per_pair_spearman']:5.2f}   (attribution {secs['attribution']:.0f} s, "
                  f"exact {secs['exact']:.0f} s, all kinds)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
