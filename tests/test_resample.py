"""The resample AIE against hand-written hook patching, its strata and shared pairs, and its prefix cache."""

import numpy as np
import pytest

import confounded_patching as cp
import reference
import tiny
from confounded_patching.models.tokens import as_id_lists

A, B = 40, 41


def test_resample_equals_hand_patching_per_pair():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(6, seed=4)
    ids = as_id_lists(prompts, tok)
    nodes = cp.nodes(hf, positions=(-1, -2))
    metric = cp.metrics.logit_diff("w3", "w4")
    a, b = tok.convert_tokens_to_ids(["w3", "w4"])
    res = cp.resample(hf, prompts, nodes, metric, n_pairs=6, tokenizer=tok, batch_size=9, progress=False)
    assert res.effects.shape == (6, len(nodes)) and (res.pairs[:, 0] != res.pairs[:, 1]).all()
    for k, (i, j) in enumerate(res.pairs):
        src = reference.hook_acts(hf, "llama", ids[j], 4)
        base = reference.hook_acts(hf, "llama", ids[i], 4)["logits"]
        for n, node in enumerate(nodes):
            lg = reference.hand_patched_metric(hf, ids[i], node, reference.node_value(src, node), 4)
            assert abs(res.effects[k, n] - float((lg[a] - lg[b]) - (base[a] - base[b]))) < 1e-5
    assert res.value.shape == res.se.shape == (len(nodes),)


def test_resample_strata_and_shared_pairs(tmp_path):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(8, seed=5)
    strata = ["a", "a", "a", "b", "b", "b", "c", "c"]
    metric = cp.metrics.logit("w3")
    res = cp.resample(hf, prompts, cp.nodes(hf, kinds=("mlp",)), metric, n_pairs=20, strata=strata, tokenizer=tok,
                      progress=False)
    assert all(strata[i] == strata[j] and i != j for i, j in res.pairs)
    again = cp.resample(hf, prompts, cp.nodes(hf, kinds=("head",)), metric, n_pairs=20, strata=strata, tokenizer=tok,
                        progress=False)
    assert np.array_equal(res.pairs, again.pairs)  # the same pairs whatever the nodes
    back = cp.ResampleResult.load(res.save(tmp_path / "r"))
    assert np.array_equal(back.effects, res.effects) and back.stratified
    with pytest.raises(cp.InputError, match="every stratum has a single prompt"):
        cp.resample(hf, prompts[:2], [cp.MLP(0)], metric, strata=["a", "b"], tokenizer=tok)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma"])
def test_resample_prefix_cache_changes_nothing_on_ragged_prompts(family):
    hf, tok = tiny.hf_model(family, n_layers=3), tiny.tokenizer()
    prompts = tiny.prompts(6, lo=3, hi=9)
    nodes = [cp.Resid(2, -1), cp.Head(1, 2, -2), cp.MLP(2, -1), cp.MLP(0, -1), cp.Head(2, 0, -1)]
    out = {cached: cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), n_pairs=9, tokenizer=tok,
                               batch_size=5, progress=False, prefix_cache=cached).effects for cached in (True, False)}
    np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-5)
    assert np.abs(out[False]).max() > 1e-3  # the nodes do move the metric
