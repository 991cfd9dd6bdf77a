"""Remote execution: nnsight's serialisation dry run gives the local results; other backends refuse clearly."""

import nnsight
import numpy as np
import pytest
import torch

import confounded_patching as cp
import tiny

CLEAN = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
CORRUPT = torch.tensor([[5, 6, 30, 8, 9, 10], [11, 40, 13, 14, 15, 16]])


@pytest.fixture(scope="module")
def model():
    return nnsight.TransformersModel(tiny.hf_model("llama"), tokenizer=tiny.tokenizer())


def test_collect_remote_local_equals_local(model):
    nodes = cp.nodes(model, positions=(-1, -2))
    prompts = tiny.prompts(5)
    kw = dict(metric=cp.metrics.logit("w3"), embed_layer=1, progress=False)
    a = cp.collect(model, prompts, nodes, **kw)
    b = cp.collect(model, prompts, nodes, remote="local", **kw)
    for n in nodes:
        assert torch.equal(a[n], b[n])
    assert torch.equal(a.outcome, b.outcome) and torch.equal(a.embedding, b.embedding)


def test_patch_and_resample_remote_local_equal_local(model):
    nodes = cp.nodes(model, positions=(-1, 0))
    metric = cp.metrics.logit_diff(40, 41)
    a = cp.patch(model, CLEAN, CORRUPT, nodes, metric, progress=False)
    b = cp.patch(model, CLEAN, CORRUPT, nodes, metric, progress=False, remote="local")
    np.testing.assert_array_equal(a.raw, b.raw)
    prompts = tiny.prompts(6)
    ra = cp.resample(model, prompts, nodes, metric, n_pairs=5, progress=False)
    rb = cp.resample(model, prompts, nodes, metric, n_pairs=5, progress=False, remote="local")
    np.testing.assert_array_equal(ra.effects, rb.effects)


def test_backends_that_cannot_run_remotely_say_so(model):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    with pytest.raises(cp.InputError, match="remote execution needs an nnsight model .* transformers"):
        cp.collect(hf, ["w1 w2"], [cp.MLP(0)], tokenizer=tok, remote=True)
    with pytest.raises(cp.InputError, match="transformer_lens, which runs locally only"):
        cp.collect(tiny.bridge(tiny.hf_model("gpt2")), [[5, 6]], [cp.MLP(0)], remote=True)
    with pytest.raises(cp.InputError, match="names by repo id"):
        cp.collect(model, ["w1 w2"], [cp.MLP(0)], remote=True, progress=False)
