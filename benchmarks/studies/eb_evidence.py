"""EB-AIE against the interventional AIE on SmolLM2-135M: the default query, its reliable flag, per dataset.

For each dataset and every MLP and attention-head node at the last position
(30 + 270 = 300 nodes):

1. the truth: the exact resample AIE, ``cp.resample(model, prompts, nodes,
   metric, n_pairs=32, strata=topics)`` (donors from the prompt's topic);
2. the EB-AIE (``cp.mediate``, library defaults, adjusted for the topics and
   unadjusted) with the query from the sentence encoder (``query="sentence"``,
   all-MiniLM-L6-v2) and from the model's residual stream entering layer 7
   (``query="model"``: nodes at layers 0-7 get no estimate);
3. agreement over the nodes where both are finite, and over the nodes the
   estimator flags reliable: Spearman of |value| and the overlap of the top
   10 nodes by |value|; also on the nodes both queries estimate (layers 8-29),
   which is how the default query was chosen.

Datasets: ``professions`` (outcome ``logit(" he") - logit(" she")``, topic =
occupational domain), ``capitals`` (per-prompt right-minus-wrong country
logit, topic = continent) and ``topic_toxicity`` (the paper's setting: the
EB-AIE of the binary label of the model's greedy continuation, the
interventional AIE of the differentiable ``hostile_logprob``; topics =
k-means clusters of the sentence embeddings, k = 6).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/studies/eb_evidence.py [--datasets professions,capitals,topic_toxicity]
    python benchmarks/studies/eb_evidence.py --report-only          # the tables again from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/_common.py
import _common  # noqa: E402  (environment first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import confounded_patching as cp  # noqa: E402

EMBED_LAYER = 7
QUERIES = ("sentence", "model")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def top_overlap(a, b, k: int = 10) -> float:
    if len(a) < k:
        return float("nan")
    ta, tb = set(np.argsort(-np.abs(a))[:k]), set(np.argsort(-np.abs(b))[:k])
    return len(ta & tb) / k


def agree(est, truth, mask) -> dict:
    ok = mask & np.isfinite(est) & np.isfinite(truth)
    return {"nodes": int(ok.sum()), "spearman_abs": spearman(np.abs(est[ok]), np.abs(truth[ok])),
            "top10": top_overlap(est[ok], truth[ok])}


def generate(hf, tok, prompts, max_new_tokens=6, batch_size=32) -> list[str]:
    """Greedy continuations of ``prompts`` (left padding)."""
    side = tok.padding_side
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    try:
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True)
            with torch.inference_mode():
                ids = hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out


def dataset(name: str, tok, hf, args) -> dict:
    if name == "professions":
        d = cp.datasets.professions(args.professions, seed=0, tokenizer=tok)
        return {"prompts": list(d.prompts), "topics": list(d.topics), "metric": d.metric, "eb_outcome": d.metric}
    if name == "capitals":
        d = cp.datasets.capitals(None, seed=0, tokenizer=tok)
        return {"prompts": list(d.prompts), "topics": list(d.topics), "metric": d.metric, "eb_outcome": d.metric}
    if name == "topic_toxicity":
        d = cp.datasets.topic_toxicity(None, seed=0, tokenizer=tok)
        prompts = list(d.prompts)
        t0 = time.perf_counter()
        labels = np.asarray(cp.datasets.label_continuations(generate(hf, tok, prompts)), dtype=float)
        print(f"  generation of {len(prompts)} continuations: {time.perf_counter() - t0:.0f} s; "
              f"{labels.mean():.1%} hostile", flush=True)
        from confounded_patching.models.encoder import embed_sentences

        from confounded_patching.estimation.confounders import kmeans_topics

        topics = kmeans_topics(embed_sentences(prompts), k=6, seed=0)
        return {"prompts": prompts, "topics": [str(t) for t in topics], "metric": d.metric, "eb_outcome": labels,
                "prevalence": float(labels.mean())}
    raise SystemExit(f"unknown dataset {name!r}")


def run(name: str, model, hf, tok, nodes, args) -> dict:
    data = dataset(name, tok, hf, args)
    prompts, topics, metric = data["prompts"], data["topics"], data["metric"]
    rec = {"dataset": name, "prompts": len(prompts), "nodes": [n.label for n in nodes],
           "layers": [n.layer for n in nodes], "seconds": {}}
    t0 = time.perf_counter()
    truth = cp.resample(model, prompts, nodes, metric, n_pairs=args.pairs, strata=topics, method="exact",
                        progress=False)
    rec["seconds"]["resample"] = time.perf_counter() - t0
    rec["truth"] = np.asarray(truth.value, dtype=float).tolist()
    t0 = time.perf_counter()
    acts = cp.collect(model, prompts, nodes, metric=metric, embed_layer=EMBED_LAYER, progress=False)
    rec["seconds"]["capture"] = time.perf_counter() - t0
    outcome = data["eb_outcome"] if not callable(data["eb_outcome"]) else metric
    for query in QUERIES:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            med = cp.mediate(model, prompts, nodes, outcome, confounder=np.asarray(topics), activations=acts,
                             query=query, embed_layer=EMBED_LAYER, progress=False)
        rec["seconds"][f"eb:{query}"] = time.perf_counter() - t0
        for which in ("adjusted", "unadjusted"):
            tab = med.table(which == "adjusted")
            rec[f"{query}:{which}"] = {"value": tab.value.tolist(), "reliable": [bool(b) for b in tab.reliable],
                                       "reason": tab.reason, "status": tab.status, "ess_x": float(tab.ess_x),
                                       "query_corr": tab.query_corr.tolist(), "augmented": bool(tab.augmented),
                                       "detectable": tab.detectable.tolist()}
    print(f"  {name}: {json.dumps(rec['seconds'])}", flush=True)
    return rec


def tables(records: list) -> str:
    lines = ["| dataset | query | estimator | nodes | Spearman abs(v) | top-10 | reliable nodes | Spearman abs(v), "
             "reliable | top-10, reliable | layers 8-29: nodes | Spearman abs(v) | top-10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in records:
        truth = np.asarray(rec["truth"])
        upper = np.asarray(rec["layers"]) > EMBED_LAYER
        for query in QUERIES:
            for which in ("adjusted", "unadjusted"):
                r = rec[f"{query}:{which}"]
                v = np.asarray(r["value"], dtype=float)
                rel = np.asarray(r["reliable"], dtype=bool)
                a, b, c = agree(v, truth, np.ones_like(rel)), agree(v, truth, rel), agree(v, truth, upper)
                f = lambda x: "–" if not np.isfinite(x) else f"{x:.2f}"  # noqa: E731
                lines.append(f"| {rec['dataset']} | {query} | {which} | {a['nodes']} | {f(a['spearman_abs'])} | "
                             f"{f(a['top10'])} | {b['nodes']} | {f(b['spearman_abs'])} | {f(b['top10'])} | "
                             f"{c['nodes']} | {f(c['spearman_abs'])} | {f(c['top10'])} |")
    return "\n".join(lines)


def detectable(records: list) -> str:
    """The smallest AIE any estimator could tell from 0 at each node (``AIETable.detectable``) against the
    interventional AIE of the same node. Only where the EB-AIE's outcome is the interventional metric
    (not topic_toxicity, whose EB-AIE is of the binary label)."""
    lines = ["| dataset | query | estimator | nodes | smallest detectable AIE: median (range) | largest abs(interventional "
             "AIE) | nodes whose abs(interventional AIE) is detectable | of the interventional top 10 |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in records:
        if rec["dataset"] == "topic_toxicity":
            continue
        truth = np.abs(np.asarray(rec["truth"], dtype=float))
        top = set(np.argsort(-truth)[:10])
        for query in QUERIES:
            for which in ("adjusted", "unadjusted"):
                r = rec[f"{query}:{which}"]
                if "detectable" not in r:
                    continue
                det = np.asarray(r["detectable"], dtype=float)
                ok = np.isfinite(det) & np.isfinite(truth)
                seen = ok & (truth >= det)
                lines.append(f"| {rec['dataset']} | {query} | {which} | {int(ok.sum())} | {np.median(det[ok]):.3g} "
                             f"({det[ok].min():.3g}-{det[ok].max():.3g}) | {truth[ok].max():.3g} | {int(seen.sum())} | "
                             f"{sum(1 for i in top if seen[i])} |")
    return "\n".join(lines)


def reasons(records: list) -> str:
    out = []
    for rec in records:
        for query in QUERIES:
            r = rec[f"{query}:adjusted"]
            first = [s.split(" (")[0] for s in r["reason"] if s]
            common = {k: first.count(k) for k in sorted(set(first), key=first.count, reverse=True)[:3]}
            out.append(f"- {rec['dataset']}, query={query}: {sum(r['reliable'])} of {len(r['reliable'])} reliable; "
                       f"median query correlation {np.nanmedian(r['query_corr']):.2f}; topic-model ESS "
                       f"{r['ess_x']:.0f} of {rec['prompts']}; reasons {common}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="professions,capitals,topic_toxicity")
    ap.add_argument("--professions", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "out" / "eb_evidence.json"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    _common.setup_threads()
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    if not args.report_only:
        model = cp.models.smollm2()
        tok = model.tokenizer
        nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,))
        hf = None
        done = {r["dataset"] for r in records}
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            if name in done:
                continue
            if name == "topic_toxicity" and hf is None:
                hf = cp.models.smollm2(backend="hf")[0]  # generation runs on the plain HF model
            print(f"{name} ...", flush=True)
            records.append(run(name, model, hf, tok, nodes, args))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records))
    print(tables(records))
    print()
    print(reasons(records))
    print()
    print(detectable(records))


if __name__ == "__main__":
    main()
