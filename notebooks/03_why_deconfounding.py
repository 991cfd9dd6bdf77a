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
# # Why deconfounding: a simulation with a planted answer
#
# A node can look important because it **tracks the topic** of the prompt, and the topic also drives the
# outcome. Here we build data where we know every node's true average indirect effect (AIE) and watch
# the unadjusted estimator fall for such a node while the topic-adjusted EB-AIE does not. Then we look at
# the one knob that decides everything, the balancing tolerance **γ**, and at the diagnostics that say
# when an estimate can be trusted.
#
# No model is needed: the simulations are plain arrays, and every step takes seconds.

# %%
# Setup. In Google Colab this installs the package from its repository (REPO_URL, the address the README
# gives); anywhere else it does nothing (install locally with `bash scripts/install.sh`, see the README).
import sys

REPO_URL = "https://github.com/OWNER/confounded_patching"   # set OWNER once the repository is published
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    if "/OWNER/" in REPO_URL:
        raise RuntimeError("set REPO_URL to the repository's address (see the README) to install the package")
    # %pip install -q "confounded-patching @ git+{REPO_URL}"
    import plotly.io as pio  # if plotly figures do not show up in Colab, uncomment the next line:
    # pio.renderers.default = "colab"

# %%
import os

FULL = False                    # True: more seeds and bootstrap draws (minutes)
SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # fewer bootstrap draws, seeds and γ values

M = 2000                        # simulated prompts
K = 100                         # random partners j per prompt i
N_BOOT = 30 if SMALL else 500 if FULL else 200   # bootstrap draws for the intervals
N_GAMMAS = 5 if SMALL else 14   # points on the γ path
SEEDS = range(2) if SMALL else range(20) if FULL else range(6)

# %%
import warnings

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import confounded_patching as cp

# %% [markdown]
# ## The structural model
#
# `cp.simulate.gaussian_sem` draws, for each prompt,
#
# - a topic `x ∈ {0, 1, 2}` (the confounder);
# - a query embedding `q | x ~ N(α_x, I)` (what the prompt says; the topic shifts it);
# - **causal** nodes `n = B q + ε`, computed from the query;
# - **topic-only** nodes `n = D α_x + ε`, which see only the topic;
# - an outcome `y = Σ_nodes qᵀ C n + bᵀq + θ_x + noise`.
#
# The AIE of a node is the average change of `y` when a prompt runs with the node's value from a random
# other prompt. For a causal node it is `−tr(C B Σ_Q)`; for a topic-only node it is **0** once the topic
# is held fixed. But a topic-only node co-varies with `y` through `x` — that is the trap.

# %%
sim = cp.simulate.gaussian_sem(m=M, n_causal=4, n_spurious=4, confounding=1.0, seed=1)
print("query", sim.query.shape, "| nodes", sim.nodes.shape, "| outcome", sim.outcome.shape)
pd.Series(sim.truth, index=sim.names, name="true AIE").round(2).to_frame().T

# %%
node = sim.nodes[sim.names.index("topic_only0")]
fig = px.scatter(x=node[:, 0], y=sim.outcome, color=sim.topics.astype(str), opacity=0.4,
                 labels={"x": "topic_only0, first coordinate", "y": "outcome y", "color": "topic"},
                 title="A topic-only node: correlated with y only because both follow the topic")
fig.update_layout(width=700, height=420).show()

# %% [markdown]
# ## Unadjusted vs adjusted
#
# `cp.aie_many` is the estimator on plain arrays (`cp.mediate` calls it after capturing a model's nodes):
# query embeddings `[m, d_q]`, node activations `[n_nodes, m, d_n]`, outcome `[m]`, and the confounder —
# topic labels here, or `None` for the unadjusted estimator. Both use the same random partners, so their
# difference is not pair noise.

# %%
adjusted = cp.aie_many(sim.query, sim.nodes, sim.outcome, sim.topics, K=K, n_boot=N_BOOT)
unadjusted = cp.aie_many(sim.query, sim.nodes, sim.outcome, None, K=K, n_boot=N_BOOT)

fig = go.Figure()
fig.add_bar(x=list(sim.names), y=sim.truth, name="truth", marker_color="#444")
for name, tab, color in (("unadjusted", unadjusted, "#d62728"), ("adjusted for topic", adjusted, "#1f77b4")):
    fig.add_bar(x=list(sim.names), y=tab.value, name=name, marker_color=color,
                error_y=dict(type="data", array=tab.ci_high - tab.value, arrayminus=tab.value - tab.ci_low))
fig.update_layout(barmode="group", width=850, height=420, yaxis_title="AIE (units of y)",
                  title="Planted AIE vs the two estimators (95% bootstrap intervals)").show()

# %%
spurious = [i for i, n in enumerate(sim.names) if n.startswith("topic_only")]
causal = [i for i, n in enumerate(sim.names) if n.startswith("causal")]
for name, tab in (("unadjusted", unadjusted), ("adjusted", adjusted)):
    weakest_causal = np.abs(tab.value[causal]).min()
    strongest_spurious = np.abs(tab.value[spurious]).max()
    louder = sum(np.abs(tab.value[i]) > weakest_causal for i in spurious)
    print(f"{name:10s}: largest |AIE| of a topic-only node {strongest_spurious:.2f}, smallest of a causal "
          f"node {weakest_causal:.2f}; {louder} of {len(spurious)} topic-only nodes outrank a causal one")

# %% [markdown]
# The unadjusted estimator credits the topic-only nodes with effects as large as those of causal nodes:
# the topic moves both the node and the outcome, and without adjustment that co-variation looks like an
# effect. More prompts would not help — the bias is structural. Adjusting for the topic puts the
# topic-only nodes near 0.
#
# The adjusted estimates of the causal nodes are not exact: the weights are regularised (γ, below), which
# shrinks estimates toward 0, and they rest on fewer effective prompts, which widens the intervals. Read
# EB-AIEs with their intervals and diagnostics, and check them against a resample AIE where you can
# (notebook 02).
#
# ## The diagnostics
#
# Each estimate carries the state of its weights:
#
# | field | meaning |
# |---|---|
# | `status` | solver status of the node's weights: `converged`, `max_iter`, or `infeasible` (then the AIE is NaN, never a made-up number) |
# | `ess` | effective sample size `(Σπ)² / Σπ²` of the node's weights, out of `n` prompts |
# | `pair_ess` | the same for the pair weights `w_ij`, as a share of `n·K`: how many pairs really carry the estimate |
# | `gamma`, `gamma_max`, `gamma_noise` | the tolerance chosen, where the weights become uniform, and the noise level of the balance constraints |
# | `imbalance` | `‖Gᵀw‖∞`, how far the weights are from exact balance (≤ γ when converged) |
# | `ess_x`, `status_x`, `gamma_x` | the same for the confounder's own weights `π_x` |

# %%
cols = ["node", "value", "ci_low", "ci_high", "status", "ess", "pair_ess", "gamma", "gamma_max", "gamma_noise"]
print(adjusted.to_dataframe(nodes=sim.names)[cols].round(3).to_string(index=False))
print(f"confounder weights: status {adjusted.status_x}, ESS {adjusted.ess_x:.0f} of {adjusted.n}")


# %% [markdown]
# The plot functions take any long-form table with the columns `node, kind, layer, head, pos, method,
# value` (the `to_dataframe()` of a model's results has them). For simulated nodes we fill in
# placeholders and draw the diagnostics of both estimators:

# %%
def long_table(tab, method):
    df = tab.to_dataframe(nodes=sim.names)
    df["kind"], df["layer"], df["head"], df["pos"], df["method"] = "mlp", range(len(df)), None, -1, method
    return df

both = pd.concat([long_table(adjusted, "eb:adjusted"), long_table(unadjusted, "eb:unadjusted")])
cp.plot.diagnostics(both).show()

# %% [markdown]
# ## γ, the knob that decides everything
#
# Entropy balancing finds weights that make the query and the node (and the topic) look independent;
# the AIE is read off the **cross-evaluation** of those weights on random pairs `(i, j)`. γ is the
# tolerance on the balance of the products `q ⊗ n`:
#
# - at **γ ≥ γ_max** nothing needs balancing, the weights are **uniform**, every ratio is 1 and the AIE
#   is **exactly 0** (up to float rounding) — a large γ is not a safe default, it shrinks every node to 0;
# - as γ falls the weights move away from uniform and the estimate moves away from 0, toward the effect;
# - at **small γ** the weights must extrapolate: a few pairs get huge ratios and carry the whole
#   estimate (the pair ESS collapses toward 0), so its variance explodes and the winsorization of the
#   largest terms starts to decide the answer — or the balance is impossible and the status says
#   `infeasible`.
#
# This section looks at the balancing term alone (`augment=False`). By default `cp.aie_many` also adds an
# outcome-model term (a ridge regression of y on the balance features) that puts back what approximate
# balance leaves out; with it, uniform weights give the regression estimate rather than 0
# (`docs/estimator.md`).
#
# First, uniform weights, for both estimators (γ above γ_max for the nodes and for the confounder):

# %%
one = cp.simulate.gaussian_sem(m=M, confounding=1.0, seed=1)       # one causal, one topic-only node
uniform_adj = cp.aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0, gamma=10.0, gamma_x=10.0,
                          augment=False)
uniform_un = cp.aie_many(one.query, one.nodes, one.outcome, None, K=K, n_boot=0, gamma=10.0, augment=False)
print("gamma_max per node:", uniform_adj.gamma_max.round(3))
print("adjusted AIE:  ", uniform_adj.value, "  ESS", uniform_adj.ess.round(1), "of", M)
print("unadjusted AIE:", uniform_un.value)
assert np.allclose(uniform_adj.value, 0, atol=1e-5) and np.allclose(uniform_un.value, 0, atol=1e-5)

# %% [markdown]
# Now the path from γ_max down toward 0, with the default winsorization of the terms (clipped at their
# 5th / 95th percentiles, solid) and without it (dashed). The dotted horizontal lines are the planted truths; the right panel is the
# pair ESS, with the γ the automatic rule picks for each node as a dashed vertical line. Only the node
# models' γ moves here; the confounder's weights keep their automatic γ_x, so even at the top of the path
# the adjusted AIE need not be exactly 0.

# %%
auto = cp.aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0)   # gamma="auto"
gammas = np.concatenate([np.geomspace(auto.gamma_max.max(), 0.002, N_GAMMAS - 1), [0.0]])
rows = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # the small-γ end warns about thin weights: that is the point
    for g in gammas:
        for winsorize in (0.05, None):
            tab = cp.aie_many(one.query, one.nodes, one.outcome, one.topics, K=K, n_boot=0, gamma=float(g),
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

# %%
# the same path as numbers, for the causal node
c0 = path[path.node == "causal0"]
wins, raw = c0[c0.winsorize].set_index("gamma"), c0[~c0.winsorize].set_index("gamma")
summary = pd.DataFrame({"winsorized": wins.value, "not winsorized": raw.value, "pair ESS": wins.pair_ess,
                        "status": wins.status}).sort_index(ascending=False)
print(summary.round(4).to_string())
print("true AIE of causal0:", one.truth[0].round(3))

# %% [markdown]
# When the balance cannot be met at all — here fewer prompts and wider node activations, with exact
# balance asked for (γ = 0) — the solver's dual certificate detects it and the estimate is NaN with
# status `infeasible`, not a number built from diverging weights:

# %%
hard = cp.simulate.gaussian_sem(m=200, d_q=4, d_n=4, confounding=1.0, seed=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    exact = cp.aie_many(hard.query, hard.nodes, hard.outcome, hard.topics, K=50, n_boot=0, gamma=0.0)
print(exact.value, exact.status)

# %% [markdown]
# ## The automatic rule (`gamma="auto"`, the default)
#
# Per node, walk γ down from γ_max by factors of 0.8 and keep the last point where (1) the solver
# converged, (2) γ is still above the **noise level** of the balance constraints (the largest |mean| of
# `q ⊗ n` after randomly permuting the node across prompts — balancing below it only fits noise), and
# (3) the pair ESS is at least 10% of its value at γ_max. The dashed vertical lines in the right panel
# above mark the chosen γ; `aie_many(..., gamma=0.2)` overrides it, and `gamma_rule=GammaRule(...)`
# changes the knobs.

# %%
pd.DataFrame({"node": one.names, "truth": one.truth, "auto AIE": auto.value, "gamma": auto.gamma,
              "gamma_max": auto.gamma_max, "gamma_noise": auto.gamma_noise, "pair_ess": auto.pair_ess}).round(3)

# %% [markdown]
# ## How stable is this across draws?
#
# The same design with different seeds. When the topics barely overlap in query space the confounder's
# own weights get a small ESS (`ess_x`) and the estimator warns that the adjusted AIE rests on
# extrapolation; such rows are the ones to distrust.

# %%
rows = []
for seed in SEEDS:
    s = cp.simulate.gaussian_sem(m=M, confounding=1.0, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = cp.aie_many(s.query, s.nodes, s.outcome, s.topics, K=K, n_boot=0)
    u = cp.aie_many(s.query, s.nodes, s.outcome, None, K=K, n_boot=0)
    rows.append({"seed": seed, "truth causal": s.truth[0], "adjusted causal": a.value[0],
                 "unadjusted causal": u.value[0], "adjusted topic-only": a.value[1],
                 "unadjusted topic-only": u.value[1], "ess_x": a.ess_x, "warned": bool(caught),
                 "status": "/".join(a.status)})
pd.DataFrame(rows).round(2)

# %% [markdown]
# ## What to take away
#
# - An unadjusted node score can be confidently wrong when a confounder drives both the node and the
#   outcome; adjusting for the topic removes that failure mode.
# - The balancing term of the EB-AIE is a weighted estimate: at uniform weights it is exactly 0; with too little
#   regularisation a few pairs carry it and it becomes unstable. Read the diagnostics (status, ESS,
#   pair ESS, γ) with every number.
# - Averaged over random pairs, the AIE is 0 for any outcome that is additive in the query and the node:
#   it measures their interaction, not the node's share of the output.
#
# `docs/estimator.md` has the estimator, the γ rule and the measurements behind the defaults.
