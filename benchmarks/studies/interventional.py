"""The interventional (resample) AIE on SmolLM2-135M: first order and ``auto`` against exact, by node kind.

For each dataset (professions, capitals, ioi, topic_toxicity), on the
default node mix of ``confounded-patching demo`` (30 MLPs and 270 heads at
the last position, the residual stream at positions -3, -2, -1: 390 nodes),
with topic-stratified donors (``strata=topics``):

a. **same pairs**: ``cp.resample`` with ``method="attribution"`` and
   ``method="auto"`` against ``method="exact"`` on the same ``--pairs``
   pairs, by node kind: Spearman of |value|, Pearson, the median over pairs
   of the Spearman correlation across nodes, the overlap of the top 10 by
   |value|, and the seconds of each call. With ``--mix540-datasets``, the
   same on the 540-node mix of ``benchmarks/attribution_aie.py`` (residual
   stream at 8 positions), for the time ratio of ``auto`` there.
b. **every donor**: ``n_pairs="all"`` (first order, every donor of the
   prompt's topic) against an exact resample of ``--ref-pairs`` pairs on a
   subset of the nodes (every MLP, the residual stream at -1 and
   ``--ref-heads`` random heads; the first ``--pairs`` of those pairs are the
   pairs of a.), next to the first-order AIE of the same pairs and to two
   exact halves of the pairs against each other (how far the reference's own
   pair noise lets any estimate agree).
c. **faithfulness**: mean |Δy| over ``--eval-prompts`` held-out prompts
   (not used by any estimate) when the top-k nodes of each ranking (classic
   patching of ``--patch-pairs`` clean/corrupt pairs, the exact, ``auto`` and
   first-order AIE of a., the every-donor AIE of b., random) are
   mean-ablated together (``cp.ablation_curve``, means over all prompts), over
   all nodes and over the MLPs and heads only.

Outcomes: professions ``logit(" he") − logit(" she")``; capitals and ioi the
per-prompt right-minus-wrong logit; topic_toxicity the differentiable
``hostile_logprob`` (log probability of the hostile-word lexicon; its
binary labels do not respond to an intervention). Topics: the datasets' own.

    OMP_NUM_THREADS=1 python benchmarks/studies/interventional.py            # about 45 min on 1 core
    python benchmarks/studies/interventional.py --report-only                # the tables again from the JSON

Results are written after each dataset to ``benchmarks/out/interventional.json``
(a rerun skips the datasets already there; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/_common.py
import _common  # noqa: E402  (environment first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import confounded_patching as cp  # noqa: E402
from confounded_patching.interventions.confirm import agreement  # noqa: E402
from confounded_patching.interventions.resample import draw_pairs  # noqa: E402

DATASETS = ("professions", "capitals", "ioi", "topic_toxicity")
KINDS = ("mlp", "head", "resid", "all")
OUT = Path(__file__).resolve().parent.parent / "out" / "interventional.json"


def load(name: str, n: int, tok):
    if name == "professions":
        return cp.datasets.professions(n, seed=0, tokenizer=tok)
    if name == "capitals":
        return cp.datasets.capitals(None, seed=0, tokenizer=tok)  # 372 in all
    if name == "ioi":
        return cp.datasets.ioi(n, seed=0, tokenizer=tok)
    if name == "topic_toxicity":
        return cp.datasets.topic_toxicity(min(n, 960), seed=0, tokenizer=tok)
    raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def node_mix(model, resid_positions) -> list:
    return (cp.nodes(model, kinds=("mlp", "head"), positions=(-1,))
            + cp.nodes(model, kinds=("resid",), positions=tuple(resid_positions)))


def by_kind(nodes, est, ex, est_effects=None, ex_effects=None) -> dict:
    """:func:`agreement` per node kind and over all nodes."""
    kinds = np.array([n.kind for n in nodes])
    out = {}
    for kind in KINDS:
        s = np.ones(len(nodes), bool) if kind == "all" else kinds == kind
        if not s.any():
            continue
        out[kind] = agreement(np.asarray(est)[s], np.asarray(ex)[s],
                              None if est_effects is None else np.asarray(est_effects)[:, s],
                              None if ex_effects is None else np.asarray(ex_effects)[:, s], k=10)
    return out


def timed_resample(model, prompts, nodes, metric, **kw):
    t0 = time.perf_counter()
    res = cp.resample(model, prompts, nodes, metric, progress=False, **kw)
    return res, time.perf_counter() - t0


def same_pairs(model, prompts, nodes, metric, pairs, topics, batch_size) -> dict:
    """Exact, attribution and auto on the same pairs: agreement by kind and seconds."""
    res, secs = {}, {}
    for method in ("exact", "attribution", "auto"):
        res[method], secs[method] = timed_resample(model, prompts, nodes, metric, method=method, pairs=pairs,
                                                   strata=topics, batch_size=batch_size)
    ex = res["exact"]
    n_exact_auto = sum(h == "exact" for h in res["auto"].node_methods)
    return {"n_nodes": len(nodes), "n_pairs": int(len(pairs)), "auto_exact_nodes": int(n_exact_auto),
            "seconds": secs, "inner_seconds": {k: r.seconds for k, r in res.items()},
            "agreement": {m: by_kind(nodes, res[m].value, ex.value, res[m].effects, ex.effects)
                          for m in ("attribution", "auto")},
            "values": {m: r.value.tolist() for m, r in res.items()},
            "noise_ratio": float(np.median(ex.se) / np.std(ex.value))}, res


def run(name: str, model, tok, args) -> dict:
    data = load(name, args.prompts + args.eval_prompts, tok)
    rng = np.random.default_rng(args.seed)
    m = len(data)
    held = np.sort(rng.choice(m, min(args.eval_prompts, m // 4), replace=False))
    pool = np.setdiff1d(np.arange(m), held)[:args.prompts]
    train, evals = data.take(pool), data.take(held)
    prompts, topics, metric = list(train.prompts), list(train.topics), train.metric
    nodes = node_mix(model, args.resid_positions)
    rec = {"dataset": name, "prompts": len(prompts), "eval_prompts": len(held), "topics": len(set(topics)),
           "metric": metric.name, "nodes": [n.label for n in nodes], "kinds": [n.kind for n in nodes],
           "threads": torch.get_num_threads()}
    log = lambda msg: print(f"  [{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    log(f"{len(prompts)} prompts ({len(set(topics))} topics), {len(held)} held out, {len(nodes)} nodes")

    # a. the same pairs; the first --pairs of the --ref-pairs reference pairs
    ref_pairs = draw_pairs(len(prompts), args.ref_pairs, topics, args.seed)
    pairs = ref_pairs[:args.pairs]
    rec["same_pairs"], res = same_pairs(model, prompts, nodes, metric, pairs, topics, args.batch_size)
    log("same pairs: " + ", ".join(f"{k} {v:.1f} s" for k, v in rec["same_pairs"]["seconds"].items()))

    # a'. the 540-node mix (residual stream at 8 positions), for the time ratio of auto
    if name in args.mix540_datasets:
        nodes540 = node_mix(model, range(-1, -9, -1))
        rec["mix540"], _ = same_pairs(model, prompts, nodes540, metric, ref_pairs[:args.mix540_pairs], topics,
                                      args.batch_size)
        rec["mix540"]["nodes"] = [n.label for n in nodes540]
        log("540 nodes: " + ", ".join(f"{k} {v:.1f} s" for k, v in rec["mix540"]["seconds"].items()))

    # b. every donor against an exact resample of --ref-pairs pairs on a node subset
    heads = [k for k, n in enumerate(nodes) if n.kind == "head"]
    pick = sorted(np.random.default_rng(args.seed + 7).choice(heads, min(args.ref_heads, len(heads)), replace=False))
    sub = sorted([k for k, n in enumerate(nodes) if n.kind == "mlp" or (n.kind == "resid" and n.pos == -1)]
                 + [int(k) for k in pick])
    sub_nodes = [nodes[k] for k in sub]
    rest, t_rest = timed_resample(model, prompts, sub_nodes, metric, method="exact", pairs=ref_pairs[args.pairs:],
                                  strata=topics, batch_size=args.batch_size)
    exact_ref = np.concatenate([res["exact"].effects[:, sub], rest.effects])
    alld, t_all = timed_resample(model, prompts, nodes, metric, method="attribution", n_pairs="all", strata=topics,
                                 batch_size=args.batch_size)
    attr_ref, t_attr_ref = timed_resample(model, prompts, sub_nodes, metric, method="attribution", pairs=ref_pairs,
                                          strata=topics, batch_size=args.batch_size)
    half = len(ref_pairs) // 2
    v_ref = exact_ref.mean(0)
    se_ref = exact_ref.std(0, ddof=1) / np.sqrt(len(exact_ref))
    t_row = t_rest / max(1, len(rest.pairs) * len(sub_nodes))
    rec["all_donors"] = {
        "n_ref_pairs": int(len(ref_pairs)), "nodes": [n.label for n in sub_nodes], "index": sub,
        "seconds": {"all donors (attribution, every node)": t_all,
                    "attribution, the reference pairs (subset)": t_attr_ref,
                    f"exact, {len(ref_pairs) - args.pairs} of the pairs (subset)": t_rest,
                    f"exact, {len(ref_pairs)} pairs x {len(nodes)} nodes (extrapolated)":
                        t_row * len(ref_pairs) * len(nodes)},
        "agreement": {"all donors": by_kind(sub_nodes, alld.value[sub], v_ref),
                      "attribution, same pairs": by_kind(sub_nodes, attr_ref.value, v_ref, attr_ref.effects,
                                                         exact_ref),
                      "exact, one half of the pairs vs the other": by_kind(sub_nodes, exact_ref[:half].mean(0),
                                                                           exact_ref[half:].mean(0))},
        "exact": v_ref.tolist(), "exact_se": se_ref.tolist(), "all_donors_value": alld.value.tolist(),
        "noise_ratio": float(np.median(se_ref) / np.std(v_ref))}
    log(f"all donors {t_all:.1f} s, exact reference rest {t_rest:.1f} s")

    # c. faithfulness: top-k of each ranking mean-ablated on the held-out prompts
    t0 = time.perf_counter()
    rankings = {}
    if data.has_pairs:
        pp = train.subset(min(args.patch_pairs, len(train)), args.seed + 1)
        patched = cp.patch(model, list(pp.clean), list(pp.corrupt), nodes, pp.metric, batch_size=args.batch_size,
                           progress=False)
        rankings["classic patching"] = patched.effects.mean(0)
        rec["patch_seconds"] = time.perf_counter() - t0
        rec["patch_pairs"] = len(pp)
    v = rec["same_pairs"]["values"]
    rankings.update({"AIE exact": np.asarray(v["exact"]), "AIE auto": np.asarray(v["auto"]),
                     "AIE attribution": np.asarray(v["attribution"]), "AIE all donors": alld.value})
    for r in range(args.random_rankings):
        rankings[f"random {r + 1}"] = np.random.default_rng(1000 + r).standard_normal(len(nodes))
    acts = cp.collect(model, list(data.prompts), nodes, batch_size=args.batch_size, progress=False)
    ev_prompts, ev_metric = list(evals.prompts), evals.metric
    ks = tuple(args.ks)
    ablation = {}
    for scope in ("all nodes", "MLP and heads"):
        keep = np.array([scope == "all nodes" or n.kind != "resid" for n in nodes])
        ablation[scope] = {}
        for label, val in rankings.items():
            idx = np.flatnonzero(keep)
            ranked = [nodes[i] for i in idx[np.argsort(-np.abs(np.asarray(val)[idx]), kind="stable")]]
            curve = cp.ablation_curve(model, ev_prompts, ranked, ev_metric, ks=ks, how="mean", reference=acts,
                                      batch_size=args.batch_size, progress=False)
            ablation[scope][label] = {str(k): float(np.mean(np.abs(curve[k].effect))) for k in ks}
    rec["ablation"] = ablation
    rec["ablation_seconds"] = time.perf_counter() - t0
    rec["values"] = {k: np.asarray(x).tolist() for k, x in rankings.items() if not k.startswith("random")}
    log(f"patching and ablation {rec['ablation_seconds']:.1f} s")
    return rec


# ----------------------------------------------------------------------------- tables

def f2(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.2f}"


def table_same(records, key="same_pairs") -> str:
    lines = ["| dataset | method | kind | nodes | Spearman \\|v\\| | Pearson | per-pair Spearman | top-10 |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in records:
        if key not in rec:
            continue
        for method in ("attribution", "auto"):
            for kind, a in rec[key]["agreement"][method].items():
                lines.append(f"| {rec['dataset']} | {method} | {kind} | {a['n']} | {f2(a['spearman_abs'])} | "
                             f"{f2(a['pearson'])} | {f2(a['per_pair_spearman'])} | {f2(a['top_overlap'])} |")
    return "\n".join(lines)


def table_seconds(records, key="same_pairs") -> str:
    lines = ["| dataset | nodes (exact in auto) | pairs | exact s | attribution s | auto s | exact / attribution | "
             "exact / auto |", "|---|---|---|---|---|---|---|---|"]
    for rec in records:
        if key not in rec:
            continue
        s = rec[key]["seconds"]
        lines.append(f"| {rec['dataset']} | {rec[key]['n_nodes']} ({rec[key]['auto_exact_nodes']}) | "
                     f"{rec[key]['n_pairs']} | {s['exact']:.1f} | {s['attribution']:.1f} | {s['auto']:.1f} | "
                     f"{s['exact'] / s['attribution']:.1f}× | {s['exact'] / s['auto']:.2f}× |")
    return "\n".join(lines)


def table_all_donors(records) -> str:
    lines = ["| dataset | estimate vs exact (reference pairs) | kind | nodes | Spearman \\|v\\| | Pearson | top-10 |",
             "|---|---|---|---|---|---|---|"]
    for rec in records:
        b = rec["all_donors"]
        for est, per in b["agreement"].items():
            for kind, a in per.items():
                lines.append(f"| {rec['dataset']} | {est} | {kind} | {a['n']} | {f2(a['spearman_abs'])} | "
                             f"{f2(a['pearson'])} | {f2(a['top_overlap'])} |")
    return "\n".join(lines)


def table_all_seconds(records) -> str:
    lines = ["| dataset | prompts | reference pairs | every donor, all nodes (s) | exact at the reference pairs, "
             "all nodes (s, extrapolated) | ratio | reference median se / sd |", "|---|---|---|---|---|---|---|"]
    for rec in records:
        b = rec["all_donors"]
        s = list(b["seconds"].values())
        lines.append(f"| {rec['dataset']} | {rec['prompts']} | {b['n_ref_pairs']} | {s[0]:.1f} | {s[3]:.0f} | "
                     f"{s[3] / s[0]:.0f}× | {b['noise_ratio']:.2f} |")
    return "\n".join(lines)


def table_ablation(records, scope) -> str:
    ks = list(records[0]["ablation"][scope]["AIE exact"])
    labels = list(dict.fromkeys(k for rec in records for k in rec["ablation"][scope]))
    lines = ["| ranking | " + " | ".join(f"{rec['dataset']} k={k}" for rec in records for k in ks) + " |",
             "|---|" + "---|" * (len(records) * len(ks))]
    for label in labels:
        cells = [f2(rec["ablation"][scope].get(label, {}).get(k, np.nan)) for rec in records for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(records) -> None:
    print("\n### a. first order and auto against exact, the same topic-stratified pairs (390 nodes)\n")
    print(table_same(records))
    print("\nseconds (one call each, the same pairs)\n")
    print(table_seconds(records))
    if any("mix540" in r for r in records):
        print("\n### a'. the 540-node mix (residual stream at 8 positions)\n")
        print(table_same(records, "mix540"))
        print()
        print(table_seconds(records, "mix540"))
    print("\n### b. every donor (n_pairs='all') against an exact resample of the reference pairs\n")
    print(table_all_donors(records))
    print()
    print(table_all_seconds(records))
    for scope in ("all nodes", "MLP and heads"):
        print(f"\n### c. mean |Δy| on held-out prompts, top-k of each ranking mean-ablated ({scope})\n")
        print(table_ablation(records, scope))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--prompts", type=int, default=300, help="prompts per dataset for the estimates")
    ap.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the ablation check")
    ap.add_argument("--pairs", type=int, default=16, help="topic-stratified pairs of the same-pairs comparison")
    ap.add_argument("--ref-pairs", type=int, default=128, help="pairs of the exact reference for n_pairs='all'")
    ap.add_argument("--ref-heads", type=int, default=45, help="random heads in the exact reference")
    ap.add_argument("--resid-positions", default="-3,-2,-1")
    ap.add_argument("--mix540-datasets", default="ioi", help="datasets also timed on the 540-node mix ('' none)")
    ap.add_argument("--mix540-pairs", type=int, default=8)
    ap.add_argument("--patch-pairs", type=int, default=8, help="clean/corrupt pairs of classic patching")
    ap.add_argument("--ks", default="10,20", help="top-k sizes of the ablation check")
    ap.add_argument("--random-rankings", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--fresh", action="store_true", help="ignore the datasets already in the JSON")
    ap.add_argument("--report-only", action="store_true", help="the tables from the JSON, no model run")
    args = ap.parse_args()
    args.resid_positions = [int(p) for p in args.resid_positions.split(",")]
    args.mix540_datasets = {d.strip() for d in args.mix540_datasets.split(",") if d.strip()}
    args.ks = [int(k) for k in args.ks.split(",")]
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() and not args.fresh else []
    if not args.report_only:
        _common.setup_threads(args.threads)
        model = cp.models.smollm2()
        done = {r["dataset"] for r in records}
        t0 = time.perf_counter()
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            if name in done:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                records.append(run(name, model, model.tokenizer, args))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records))
        print(f"total {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} thread(s)", flush=True)
    order = {d: k for k, d in enumerate(DATASETS)}
    report(sorted(records, key=lambda r: order.get(r["dataset"], 99)))


if __name__ == "__main__":
    main()
