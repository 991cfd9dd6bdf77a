"""Results from a tiny random GPT-2 (and a stand-in MediationResult) for the tests of figures and reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import confounded_patching as cp
import tiny


METRIC = cp.metrics.logit_diff(10, 11)


N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def model():
    return tiny.hf_model("gpt2"), tiny.tokenizer()


@pytest.fixture(scope="module")
def nodes(model):
    hf, _ = model
    return (cp.nodes(hf, kinds=("mlp",), positions=(-1,)) + cp.nodes(hf, kinds=("head",), positions=(-2, -1))
            + cp.nodes(hf, kinds=("resid",), positions=(-3, -2, -1)))


@pytest.fixture(scope="module")
def classic(model, nodes):
    hf, tok = model
    clean = ["w5 w6 w7 w8 w9", "w11 w12 w13 w14 w15", "w20 w21 w22 w23 w24"]
    corrupt = ["w5 w6 w30 w8 w9", "w11 w40 w13 w14 w15", "w20 w21 w22 w50 w24"]
    return cp.patch(hf, clean, corrupt, nodes, METRIC, tokenizer=tok, progress=False)


@pytest.fixture(scope="module")
def resampled(model, nodes):
    hf, tok = model
    return cp.resample(hf, tiny.prompts(12, lo=4, hi=7), nodes[::3], METRIC, n_pairs=8, tokenizer=tok,
                       progress=False)


class FakeMediation:
    """Stands in for a MediationResult: two methods with intervals and diagnostics."""

    def __init__(self, nodes, seed=0):
        rng = np.random.default_rng(seed)
        rows = []
        for method, scale in (("eb:adjusted", 0.05), ("eb:unadjusted", 0.2)):
            for k, n in enumerate(nodes):
                v = float(rng.normal(0, scale))
                rows.append(dict(node=n.label, kind=n.kind, layer=n.layer, head=getattr(n, "head", None), pos=n.pos,
                                 method=method, value=v, ci_low=v - 0.01, ci_high=v + 0.02, se=0.01,
                                 gamma=0.1 + k / 100, ess=50.0 + k, imbalance=1e-4,
                                 status="infeasible" if k == 0 else "converged", winsorized=0.1, metric=METRIC.name))
        self.df = pd.DataFrame(rows)
        self.tokens = []

    def to_dataframe(self):
        return self.df.copy()


@pytest.fixture(scope="module")
def fake_med(nodes):
    return FakeMediation(nodes)
