"""Evidence on SmolLM2-135M: does the EB-AIE agree with the interventional truth, and do top nodes matter?

For two built-in datasets (professions: ``logit(" he") − logit(" she")``,
topics = occupational domain; capitals: ``logit(right capital's country) −
logit(a wrong one)`` per prompt, topics = continent) and every MLP and
attention-head node at the last position (30 + 270 = 300 nodes):

1. EB-AIE, adjusted for the dataset's topics and unadjusted (one capture
   pass, ``cp.mediate``), with the library defaults and with the variants
   named by ``--variants`` (``noaug``: the balancing-only estimator,
   ``augment=False``; ``d5``: d_q = d_n = 5; ``parametric``).
2. The brute-force resample AIE (``cp.resample``), unstratified and
   topic-stratified, with the same random pairs for every node; the ratio of
   its median standard error to the spread of its values across nodes says
   whether it is precise enough to serve as the truth.
3. Classic clean/corrupt patching (denoising, exact) and attribution patching
   on the dataset's pairs.
4. Spearman (of the signed values and of |values|) and Pearson correlation
   of every estimate with each resample truth, overlap of the top-k nodes by |value|, and the cost of each method
   in forward rows and seconds.
5. Localization: share of total |value| in the top 10 % of nodes.
6. Ablation: mean-ablate the top-k nodes of each ranking (k = 1, 5, 10, 20)
   on held-out prompts and measure how far the outcome moves (mean |Δy|);
   random rankings give the floor.

Prints tables and writes figures (HTML) and a JSON of every number to
``--out``. Sizes are flags; the defaults run in about 18 minutes on 2 cores.

    python benchmarks/studies/evidence.py [--professions 1000] [--pairs 64] [--out benchmarks/out/evidence]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/_common.py
import _common  # noqa: E402  (environment first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import confounded_patching as cp  # noqa: E402

KS = (1, 5, 10, 20)
VARIANTS = {"default": {}, "noaug": {"augment": False}, "d5": {"d_q": 5, "d_n": 5}, "d10": {"d_q": 10, "d_n": 10},
            "parametric": {"weights": "parametric"}, "ht": {"estimator": "ht"}}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def pearson(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def top_overlap(a, b, k: int) -> float:
    ta, tb = set(np.argsort(-np.abs(a))[:k]), set(np.argsort(-np.abs(b))[:k])
    return len(ta & tb) / k


def top_share(v, frac: float = 0.1) -> float:
    v = np.asarray(v, dtype=float)
    s = np.sort(np.abs(v[np.isfinite(v)]))[::-1]
    k = max(1, int(round(frac * len(s))))
    return float(s[:k].sum() / s.sum()) if s.sum() > 0 else float("nan")


def agreement(est: dict, truth: dict) -> list[dict]:
    """Correlations and top-k overlaps of every estimate with every truth, over nodes where both are finite."""
    rows = []
    pairs = [(e, v, t, tv) for e, v in est.items() for t, tv in truth.items()]
    names = list(truth)
    if len(names) == 2:
        pairs.append((names[0], truth[names[0]], names[1], truth[names[1]]))
    for e, v, t, tv in pairs:
        v, tv = np.asarray(v, dtype=float), np.asarray(tv, dtype=float)
        ok = np.isfinite(v) & np.isfinite(tv)
        a, b = v[ok], tv[ok]
        rows.append({"estimate": e, "truth": t, "n": int(ok.sum()), "spearman": spearman(a, b),
                     "spearman_abs": spearman(np.abs(a), np.abs(b)), "pearson": pearson(a, b),
                     "top10_overlap": top_overlap(a, b, 10), "top30_overlap": top_overlap(a, b, 30)})
    return rows


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_dataset(name, data, model, tok, args, log) -> dict:
    nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,))
    prompts, topics, metric = list(data.prompts), list(data.topics), data.metric
    m = len(prompts)
    rng = np.random.default_rng(args.seed)
    held = rng.choice(m, min(args.eval_prompts, m), replace=False)
    log(f"[{name}] {m} prompts, {len(set(topics))} topics, {len(nodes)} nodes")
    est, cost = {}, {}

    acts, t_cap = timed(lambda: cp.collect(model, prompts, nodes, metric=metric, embed_layer=7,
                                           batch_size=args.batch_size, progress=False))
    log(f"[{name}] capture {t_cap:.1f} s")
    for variant in args.variants:
        kw = VARIANTS[variant]
        med, t = timed(lambda: cp.mediate(None, prompts, nodes, metric, confounder=topics, activations=acts,
                                          seed=args.seed, progress=False, n_boot=0, **kw))
        tag = "" if variant == "default" else f" [{variant}]"
        est[f"EB adjusted{tag}"] = med.adjusted.value
        est[f"EB unadjusted{tag}"] = med.unadjusted.value
        cost[f"EB adjusted{tag}"] = cost[f"EB unadjusted{tag}"] = (m, t_cap + t)
        if variant == "default":
            diag = {"ess_median": float(np.median(med.adjusted.ess)),
                    "pair_ess_median": float(np.median(med.adjusted.pair_ess)),
                    "status": {s: med.adjusted.status.count(s) for s in set(med.adjusted.status)},
                    "gamma_median": float(np.median(med.adjusted.gamma)),
                    "unadjusted_exact_zero": int(np.sum(med.unadjusted.value == 0)),
                    "ess_x": float(med.adjusted.ess_x)}
        log(f"[{name}] EB-AIE {variant}: {t:.1f} s after capture")

    truth = {}
    for strat in (False, True):
        label = "resample stratified" if strat else "resample"
        res, t = timed(lambda: cp.resample(model, prompts, nodes, metric, n_pairs=args.pairs,
                                           strata=topics if strat else None, seed=args.seed,
                                           batch_size=args.batch_size, progress=False))
        truth[label] = res
        cost[label] = (args.pairs * len(nodes) + m, t)
        noise = float(np.median(res.se) / np.std(res.value))
        log(f"[{name}] {label}: {t:.1f} s; median se / sd across nodes = {noise:.2f}")

    pairs = data.subset(min(args.patch_pairs, len(data)), args.seed + 1)
    pm = pairs.metric
    for method in ("exact", "attribution"):
        res, t = timed(lambda: cp.patch(model, list(pairs.clean), list(pairs.corrupt), nodes, pm, method=method,
                                        batch_size=args.batch_size, progress=False))
        label = "patching" if method == "exact" else "attribution patching"
        est[label] = res.effects.mean(0)
        rows = len(pairs) * (len(nodes) + 2) if method == "exact" else 3 * len(pairs)
        cost[label] = (rows, t)
        log(f"[{name}] {label}: {t:.1f} s")

    table = agreement(est, {k: r.value for k, r in truth.items()})

    # ablation of each ranking's top-k nodes on held-out prompts
    rankings = {k: v for k, v in est.items() if "[" not in k}
    rankings.update({k: r.value for k, r in truth.items()})
    for r in range(args.random_rankings):
        rankings[f"random {r}"] = np.random.default_rng(1000 + r).standard_normal(len(nodes))
    eval_prompts = [prompts[i] for i in held]
    eval_metric = metric.take(held) if getattr(metric, "per_row", False) else metric
    ablation = {}
    t_abl = time.perf_counter()
    for label, v in rankings.items():
        ranked = [nodes[i] for i in np.argsort(-np.abs(v))]
        curve = cp.ablation_curve(model, eval_prompts, ranked, eval_metric, ks=KS, how="mean",
                                  reference=acts, batch_size=args.batch_size, progress=False)
        ablation[label] = {k: float(np.mean(np.abs(curve[k].effect))) for k in KS}
        ablation[label + " (mean Δy)"] = {k: float(curve[k].mean_effect) for k in KS}
    log(f"[{name}] ablation: {time.perf_counter() - t_abl:.1f} s")

    values = {**est, **{k: r.value for k, r in truth.items()}}
    return {"dataset": name, "n_prompts": m, "n_nodes": len(nodes), "pairs": args.pairs,
            "patch_pairs": len(pairs), "eval_prompts": len(held), "nodes": [n.label for n in nodes],
            "values": {k: np.asarray(v).tolist() for k, v in values.items()},
            "se": {k: r.se.tolist() for k, r in truth.items()},
            "noise_ratio": {k: float(np.median(r.se) / np.std(r.value)) for k, r in truth.items()},
            "table": table, "cost": {k: {"forward_rows": int(c[0]), "seconds": float(c[1])} for k, c in cost.items()},
            "localization": {k: top_share(v) for k, v in values.items()}, "diagnostics": diag,
            "ablation": ablation, "capture_seconds": t_cap}


def print_report(res: dict) -> None:
    name = res["dataset"]
    print(f"\n=== {name}: {res['n_prompts']} prompts, {res['n_nodes']} nodes, resample {res['pairs']} pairs/node, "
          f"patching {res['patch_pairs']} pairs, ablation on {res['eval_prompts']} held-out prompts ===")
    print("resample precision (median se / sd across nodes): "
          + ", ".join(f"{k} {v:.2f}" for k, v in res["noise_ratio"].items()))
    print(f"EB diagnostics (adjusted, default): {res['diagnostics']}")
    print(f"\n{'estimate':34s} {'truth':22s} {'nodes':>5s} {'Spearman':>9s} {'Sp. |v|':>8s} {'Pearson':>8s} "
          f"{'top10':>6s} {'top30':>6s}")
    for row in res["table"]:
        print(f"{row['estimate']:34s} {row['truth']:22s} {row['n']:5d} {row['spearman']:9.3f} "
              f"{row['spearman_abs']:8.3f} {row['pearson']:8.3f} "
              f"{row['top10_overlap']:6.2f} {row['top30_overlap']:6.2f}")
    print(f"\n{'method':34s} {'forward rows':>12s} {'seconds':>9s}")
    for k, c in res["cost"].items():
        print(f"{k:34s} {c['forward_rows']:12d} {c['seconds']:9.1f}")
    print(f"(EB rows: the capture pass; its seconds include capture {res['capture_seconds']:.1f} s)")
    print("\nlocalization: share of total |value| in the top 10 % of nodes")
    for k, v in res["localization"].items():
        print(f"  {k:34s} {v:.3f}")
    print("\nablation: mean |Δy| when the top-k nodes of each ranking are mean-ablated")
    print(f"{'ranking':34s} " + " ".join(f"{'k=' + str(k):>8s}" for k in KS))
    for label, row in res["ablation"].items():
        if label.endswith("(mean Δy)"):
            continue
        print(f"{label:34s} " + " ".join(f"{row[str(k)] if str(k) in row else row[k]:8.3f}" for k in KS))


def figures(results, out: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    for res in results:
        name, vals = res["dataset"], res["values"]
        truth = np.asarray(vals["resample"])
        fig = make_subplots(rows=1, cols=3, subplot_titles=["EB adjusted", "EB unadjusted", "patching"])
        for c, key in enumerate(["EB adjusted", "EB unadjusted", "patching"], start=1):
            fig.add_trace(go.Scatter(x=truth, y=vals[key], mode="markers", text=res["nodes"], name=key,
                                     marker=dict(size=5)), row=1, col=c)
            fig.update_xaxes(title_text="resample AIE (truth)", row=1, col=c)
        fig.update_layout(title=f"{name}: estimates against the resample AIE, per node", height=420, width=1200)
        cp.plot.save(fig, out / f"{name}_scatter.html")

        fig = go.Figure()
        for key in ("EB adjusted", "EB unadjusted", "resample", "resample stratified", "patching"):
            v = np.sort(np.abs(np.asarray(vals[key])))[::-1]
            fig.add_trace(go.Scatter(y=np.cumsum(v) / v.sum(), mode="lines", name=key))
        fig.update_layout(title=f"{name}: localization (cumulative share of |value|, nodes sorted)",
                          xaxis_title="nodes, largest |value| first", yaxis_title="cumulative share", height=420)
        cp.plot.save(fig, out / f"{name}_localization.html")

        fig = go.Figure()
        for label, row in res["ablation"].items():
            if label.endswith("(mean Δy)"):
                continue
            dash = "dot" if label.startswith("random") else None
            fig.add_trace(go.Scatter(x=list(KS), y=[row[k] if k in row else row[str(k)] for k in KS],
                                     mode="lines+markers", name=label, line=dict(dash=dash)))
        fig.update_layout(title=f"{name}: mean |Δ outcome| when the top-k nodes are mean-ablated",
                          xaxis_title="k", yaxis_title="mean |Δy|", height=420)
        cp.plot.save(fig, out / f"{name}_ablation.html")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--professions", type=int, default=1000, help="professions prompts")
    ap.add_argument("--capitals", type=int, default=0, help="capitals prompts (0: all)")
    ap.add_argument("--pairs", type=int, default=32, help="resample pairs per node")
    ap.add_argument("--patch-pairs", type=int, default=16)
    ap.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the ablation check")
    ap.add_argument("--random-rankings", type=int, default=2)
    ap.add_argument("--variants", default="default,noaug,d5", help=f"EB variants, from {sorted(VARIANTS)}")
    ap.add_argument("--datasets", default="professions,capitals")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/evidence")
    ap.add_argument("--report-only", action="store_true",
                    help="recompute the tables and figures from OUT/evidence.json without running the model")
    args = ap.parse_args()
    if args.report_only:
        results = json.loads((Path(args.out) / "evidence.json").read_text())
        for res in results:
            vals = res["values"]
            truth_names = [k for k in ("resample", "resample stratified") if k in vals]
            res["table"] = agreement({k: v for k, v in vals.items() if k not in truth_names},
                                     {k: vals[k] for k in truth_names})
            res["localization"] = {k: top_share(v) for k, v in vals.items()}
            print_report(res)
        figures(results, Path(args.out))
        return
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "default" not in args.variants:
        ap.error(f"--variants must include 'default' and come from {sorted(VARIANTS)}; received {args.variants}")
    _common.setup_threads()
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)
    model = cp.models.smollm2()
    tok = model.tokenizer
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in [d.strip() for d in args.datasets.split(",")]:
        if name == "professions":
            data = cp.datasets.professions(args.professions, seed=args.seed, tokenizer=tok)
        elif name == "capitals":
            data = cp.datasets.capitals(args.capitals or None, seed=args.seed, tokenizer=tok)
        else:
            ap.error(f"--datasets: unknown {name!r}")
        res = run_dataset(name, data, model, tok, args, log)
        results.append(res)
        print_report(res)
        (out / "evidence.json").write_text(json.dumps(results, indent=1))
    figures(results, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; figures and evidence.json in {out}/")


if __name__ == "__main__":
    main()
