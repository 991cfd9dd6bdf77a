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


# ----------------------------------------------------------------------------- first order (attribution)

import nnsight  # noqa: E402
import torch  # noqa: E402

LD = lambda lg: lg[A] - lg[B]  # noqa: E731 - the hand reference's metric on one row's logits


def _backend(hf, tok, backend):
    return {"hf": hf, "nnsight": lambda: nnsight.TransformersModel(hf, tokenizer=tok),
            "bridge": lambda: tiny.bridge(hf)}[backend]() if backend != "hf" else hf


@pytest.mark.parametrize("family,backend", [(f, "hf") for f in tiny.FAMILIES]
                         + [("gpt2", "nnsight"), ("llama", "nnsight"), ("gpt2", "bridge"), ("llama", "bridge")])
def test_attribution_equals_the_first_order_term_by_hand(family, backend):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=6)
    ids = as_id_lists(prompts, tok)
    nodes = [cp.Resid(0, -1), cp.Resid(1, -2), cp.Head(0, 1, -1), cp.Head(1, 3, -2), cp.MLP(0, -1), cp.MLP(1, -3)]
    model = _backend(hf, tok, backend)
    res = cp.resample(model, prompts if backend != "bridge" else [torch.tensor(i) for i in ids], nodes,
                      cp.metrics.logit_diff(A, B), method="attribution", n_pairs=7, tokenizer=tok, batch_size=3,
                      progress=False)
    assert res.methods == ["attribution"] * len(nodes) and res.method == "attribution"
    for k, (i, j) in enumerate(res.pairs):
        for n, node in enumerate(nodes):
            v_i, g_i = reference.node_gradient(hf, family, ids[i], node, LD, 4)
            v_j, _ = reference.node_gradient(hf, family, ids[j], node, LD, 4)
            want = float((g_i.double() * (v_j.double() - v_i.double())).sum())
            assert abs(res.effects[k, n] - want) <= 1e-4 * (1 + abs(want)), (k, node, res.effects[k, n], want)
    assert not any(p.grad is not None for p in hf.parameters())  # parameters' .grad untouched


def test_attribution_equals_exact_for_an_outcome_linear_in_the_node():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    hf.transformer.ln_f = torch.nn.Identity()  # the logits are now linear in the last MLP's output
    prompts = tiny.prompts(6, seed=8)
    nodes = [cp.MLP(1, -1), cp.Resid(0, -1)]
    kw = dict(n_pairs=12, tokenizer=tok, progress=False, seed=3)
    exact = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), **kw)
    first = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), method="attribution", **kw)
    np.testing.assert_array_equal(exact.pairs, first.pairs)
    linear, curved = np.abs(first.effects - exact.effects).max(0)
    assert linear < 1e-6 < 1e-4 < curved, (linear, curved)  # a node the outcome is nonlinear in is not exact


@pytest.mark.parametrize("strata", [None, ["a", "a", "b", "b", "b", "c", "c", "a"]])
def test_all_donors_is_the_mean_over_every_donor_pair_within_the_pool(strata):
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(8, seed=9)
    nodes = [cp.Head(1, 0, -1), cp.MLP(0, -2), cp.Resid(1, -1)]
    groups = [list(range(8))] if strata is None else [[i for i in range(8) if strata[i] == s] for s in "abc"]
    every = np.array([(i, j) for g in groups for i in g for j in g if i != j])
    kw = dict(method="attribution", tokenizer=tok, progress=False, strata=strata)
    pairs = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), pairs=every, **kw)
    pooled = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), n_pairs="all", **kw)
    assert pooled.all_donors and (pooled.pairs[:, 1] == -1).all()
    for r, i in enumerate(pooled.pairs[:, 0]):
        np.testing.assert_allclose(pooled.effects[r], pairs.effects[every[:, 0] == i].mean(0), rtol=1e-5, atol=1e-6)
    if strata is None:  # every prompt has the same number of donors: the mean over recipients is over all pairs
        np.testing.assert_allclose(pooled.value, pairs.value, rtol=1e-5, atol=1e-6)


def test_stratified_pairs_never_cross_strata_and_singletons_are_left_out_with_a_warning():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(7, seed=2)
    strata = ["x", "x", "y", "y", "y", "z", "x"]
    with pytest.warns(UserWarning, match="single prompt"):
        res = cp.resample(hf, prompts, [cp.Head(0, 0)], cp.metrics.logit(A), method="attribution", n_pairs=40,
                          strata=strata, tokenizer=tok, progress=False)
    assert all(strata[i] == strata[j] and i != j for i, j in res.pairs)
    assert 5 not in res.pairs and res.stratified and res.strata.tolist() == [0, 0, 1, 1, 1, 2, 0]
    with pytest.warns(UserWarning, match="single prompt"):
        pooled = cp.resample(hf, prompts, [cp.Head(0, 0)], cp.metrics.logit(A), method="attribution",
                             n_pairs="all", strata=strata, tokenizer=tok, progress=False)
    assert sorted(pooled.pairs[:, 0].tolist()) == [0, 1, 2, 3, 4, 6]


def test_auto_computes_each_kind_as_documented_and_records_it(tmp_path):
    hf, tok = tiny.hf_model("qwen2"), tiny.tokenizer()
    prompts = tiny.prompts(6, seed=1)
    nodes = cp.nodes(hf, positions=(-1,))
    kw = dict(n_pairs=8, tokenizer=tok, progress=False)
    auto = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), method="auto", **kw)
    exact = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), **kw)
    first = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), method="attribution", **kw)
    assert auto.methods == [cp.interventions.resample.AUTO[n.kind] for n in nodes] and auto.method == "auto"
    for k, how in enumerate(auto.methods):
        np.testing.assert_allclose(auto.effects[:, k], (exact if how == "exact" else first).effects[:, k],
                                   rtol=1e-5, atol=1e-6)
    back = cp.ResampleResult.load(auto.save(tmp_path / "auto"))
    assert back.methods == auto.methods and back.tag == "resample:auto"
    frame = auto.to_dataframe()
    assert set(frame["computed"]) == {"exact", "attribution"} and frame["method"].eq("resample:auto").all()


def test_every_position_nodes_on_prompts_of_one_length():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=4, lo=5, hi=5)
    ids = as_id_lists(prompts, tok)
    nodes = [cp.MLP(0, None), cp.Head(1, 2, None)]
    first = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), method="attribution", n_pairs=4,
                        tokenizer=tok, progress=False)
    for k, (i, j) in enumerate(first.pairs):
        for n, node in enumerate(nodes):
            v_i, g_i = reference.node_gradient(hf, "llama", ids[i], node, LD, 4)
            v_j, _ = reference.node_gradient(hf, "llama", ids[j], node, LD, 4)
            assert abs(first.effects[k, n] - float((g_i * (v_j - v_i)).sum())) < 1e-4
    exact = cp.resample(hf, prompts, nodes, cp.metrics.logit_diff(A, B), n_pairs=4, tokenizer=tok, progress=False)
    for k, (i, j) in enumerate(exact.pairs):  # patching every position of MLP 0 with j's values
        src = reference.hook_acts(hf, "llama", ids[j], 4)
        lg = reference.hand_patched_metric(hf, ids[i], cp.MLP(0, None), src["mlp", 0], 4)
        base = reference.hook_acts(hf, "llama", ids[i], 4)["logits"]
        assert abs(exact.effects[k, 0] - float((lg[A] - lg[B]) - (base[A] - base[B]))) < 1e-4
    with pytest.raises(cp.InputError, match="same token length"):
        cp.resample(hf, tiny.prompts(5, seed=4), nodes, cp.metrics.logit(A), tokenizer=tok, progress=False)


def test_resample_refuses_bad_outcomes_pairs_and_strata():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(6, seed=11)
    kw = dict(tokenizer=tok, progress=False)
    node = [cp.MLP(0)]
    with pytest.raises(cp.InputError, match="not differentiable.*method='exact'"):
        cp.resample(hf, prompts, node, lambda lg: (lg.argmax(-1) == A).float(), method="attribution", **kw)
    with pytest.raises(cp.InputError, match="metric of the logits.*cp.mediate"):
        cp.resample(hf, prompts, node, [0, 1, 0, 1, 1, 0], **kw)
    with pytest.raises(cp.InputError, match="not finite"):
        cp.resample(hf, prompts, node, lambda lg: lg[:, A] * float("nan"), **kw)
    with pytest.raises(cp.InputError, match="method='attribution'"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), n_pairs="all", method="auto", **kw)
    with pytest.raises(cp.InputError, match="method must be one of"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), method="first-order", **kw)
    for bad, match in (([[0, -1]], r"pairs\[0\] = \[0, -1\].*\[0, 5\]"), ([[2, 2]], "its own donor"),
                       ([[0, 99]], r"pairs\[0\] = \[0, 99\]"), ([0, 1, 2], r"shape \[n_pairs, 2\]"),
                       ([[0.5, 1]], "integer prompt indices")):
        with pytest.raises(cp.InputError, match=match):
            cp.resample(hf, prompts, node, cp.metrics.logit(A), pairs=bad, **kw)
    with pytest.raises(cp.InputError, match="crosses strata"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), pairs=[[0, 3]], strata=list("aaabbb"), **kw)
    with pytest.raises(cp.InputError, match="one label per prompt"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), strata="aaabbb", **kw)
    with pytest.raises(cp.InputError, match="must label every prompt; prompt 0 has nan"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), strata=[float("nan")] * 6, **kw)
    with pytest.raises(cp.InputError, match="one label per prompt"):
        cp.resample(hf, prompts, node, cp.metrics.logit(A), strata=["a", "b"], **kw)
