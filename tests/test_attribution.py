"""Attribution patching: close to exact patching, zero for identical prompts, the same on every backend."""

import numpy as np
import torch

import confounded_patching as cp
import tiny

CLEAN = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25]])
CORRUPT = torch.tensor([[5, 6, 30, 8, 9, 10], [11, 40, 13, 14, 15, 16], [20, 21, 22, 50, 24, 25]])
A, B = 40, 41


def test_attribution_correlates_with_exact():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    nodes = cp.nodes(hf, positions=(-1, -2, -3, -4))
    kw = dict(metric=cp.metrics.logit_diff(A, B), tokenizer=tok, progress=False)
    exact = cp.patch(hf, CLEAN, CORRUPT, nodes, **kw)
    attr = cp.patch(hf, CLEAN, CORRUPT, nodes, method="attribution", **kw)
    assert attr.method == "attribution"
    np.testing.assert_allclose(attr.corrupt, exact.corrupt, rtol=1e-5, atol=1e-6)
    r = np.corrcoef(attr.effects.ravel(), exact.effects.ravel())[0, 1]
    assert r > 0.9, r
    # the Resid(0) attribution is exact for a linear path: identical prompts give exactly zero
    same = cp.patch(hf, CLEAN, CLEAN.clone(), nodes, method="attribution", **kw)
    assert np.abs(same.effects).max() == 0


def test_attribution_on_transformer_lens_matches_hf():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    nodes = cp.nodes(hf, positions=(-1, -2))
    kw = dict(metric=cp.metrics.logit_diff(A, B), method="attribution", progress=False)
    a = cp.patch(hf, CLEAN, CORRUPT, nodes, tokenizer=tok, **kw)
    b = cp.patch(tiny.bridge(hf), CLEAN, CORRUPT, nodes, **kw)
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-4, atol=1e-6)
    assert not any(p.grad is not None for p in hf.parameters())  # no side effect on the user's model
