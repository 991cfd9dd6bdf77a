"""Mean, resample and zero ablation against hand-written torch hooks, one unpadded prompt at a time."""

from collections import defaultdict

import nnsight
import numpy as np
import pytest
import torch

import confounded_patching as cp
import reference
import tiny
from confounded_patching.models.tokens import as_id_lists

N_HEADS = 4
NODES = [cp.Resid(0, 1), cp.Head(0, 1, -1), cp.Head(0, 2, -1), cp.MLP(0, -1), cp.Resid(1, -2), cp.Head(1, 3, 0),
         cp.MLP(1, -3)]


def _hand_ablated_logits(hf, family, ids, replace):
    """Last-position logits of one unpadded prompt with every node of ``replace`` set at once.

    ``replace`` maps a node to its value ``[d]`` (or 0.0); ``pos=None`` sets every position.
    Module paths come from ``reference.PATHS``, not from the library.
    """
    blocks_path, out_proj, mlp = reference.PATHS[family]
    blocks = hf.get_submodule(blocks_path)
    by_site = defaultdict(list)
    for node, value in replace.items():
        by_site[node.kind, node.layer].append((node, value))
    where = lambda node: slice(None) if node.pos is None else node.pos

    def resid_pre(items):
        def hook(module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            for node, value in items:
                x[0, where(node)] = value
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
        return hook

    def z_pre(items):
        def hook(module, args):
            z = args[0].clone().unflatten(-1, (N_HEADS, -1))
            for node, value in items:
                z[0, where(node), node.head] = value
            return (z.flatten(-2), *args[1:])
        return hook

    def mlp_post(items):
        def hook(module, args, output):
            out = (output[0] if isinstance(output, tuple) else output).clone()
            for node, value in items:
                out[0, where(node)] = value
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return hook

    handles = []
    try:
        for (kind, layer), items in by_site.items():
            block = blocks[layer]
            if kind == "resid":
                handles.append(block.register_forward_pre_hook(resid_pre(items), with_kwargs=True))
            elif kind == "head":
                handles.append(block.get_submodule(out_proj).register_forward_pre_hook(z_pre(items)))
            else:
                handles.append(block.get_submodule(mlp).register_forward_hook(mlp_post(items)))
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def _hand_values(ref_acts, nodes, how, donor=None):
    """The value each node gets under ``how``, from ``reference.hook_acts`` of each reference prompt."""
    if how == "zero":
        return {node: 0.0 for node in nodes}
    if how == "resample":
        return {node: reference.node_value(ref_acts[donor], node) for node in nodes}
    return {node: torch.stack([reference.node_value(a, node) for a in ref_acts]).mean(0) for node in nodes}


def _model(hf, backend):
    return hf if backend == "hf" else nnsight.TransformersModel(hf, tokenizer=tiny.tokenizer())


@pytest.mark.parametrize("how", ["mean", "resample", "zero"])
@pytest.mark.parametrize("backend", ["hf", "nnsight"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ablation_equals_hand_hooks(family, backend, how):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=3)
    ids = as_id_lists(prompts, tok)
    assert len({len(i) for i in ids}) > 2  # different lengths: rows are padded in the library's batches
    a, b = tok.convert_tokens_to_ids(["w3", "w4"])
    res = cp.ablate(_model(hf, backend), prompts, NODES, cp.metrics.logit_diff("w3", "w4"), how=how, batch_size=2,
                    tokenizer=tok, progress=False)
    assert res.values.shape == res.baseline.shape == res.effect.shape == (5,)
    assert (res.donors is None) == (how != "resample")
    acts = [reference.hook_acts(hf, family, i, N_HEADS) for i in ids]
    for i in range(5):
        donor = None if res.donors is None else int(res.donors[i])
        lg = _hand_ablated_logits(hf, family, ids[i], _hand_values(acts, NODES, how, donor))
        base = acts[i]["logits"]
        assert abs(res.values[i] - float(lg[a] - lg[b])) < 1e-5
        assert abs(res.baseline[i] - float(base[a] - base[b])) < 1e-5
    assert np.abs(res.effect).max() > 1e-3  # the ablation does something, so the comparison can fail


@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_zero_ablation_of_every_position_equals_hand_hooks(backend):
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(4, seed=6)
    ids = as_id_lists(prompts, tok)
    nodes = [cp.Head(0, 1, None), cp.Head(0, 3, None), cp.MLP(1, None), cp.Resid(1, -1)]
    res = cp.ablate(_model(hf, backend), prompts, nodes, cp.metrics.logit(7), how="zero", batch_size=3,
                    tokenizer=tok, progress=False)
    for i in range(4):
        lg = _hand_ablated_logits(hf, "llama", ids[i], {n: 0.0 for n in nodes})
        assert abs(res.values[i] - float(lg[7])) < 1e-5


@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_ablating_with_the_prompts_own_values_changes_nothing(backend):
    # Not bit-exact: the values are read in another forward pass (collect, batch of 1) than the one they are
    # written in (2 rows), and the matmuls round differently by batch shape (~1e-8 on these models).
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    model, metric = _model(hf, backend), cp.metrics.logit_diff("w3", "w4")
    prompts = tiny.prompts(3, seed=7)
    for p in prompts:
        mean = cp.ablate(model, [p], NODES, metric, how="mean", reference=[p], tokenizer=tok, progress=False)
        assert abs(mean.effect[0]) < 1e-6
        same = cp.ablate(model, [p], NODES, metric, how="resample", reference=[p], tokenizer=tok, progress=False)
        assert same.donors.tolist() == [0] and abs(same.effect[0]) < 1e-6
    other = cp.ablate(model, prompts[:1], NODES, metric, how="mean", reference=prompts[1:2], tokenizer=tok,
                      progress=False)
    assert abs(other.effect[0]) > 1e-4  # another prompt's values do change the outcome


@pytest.mark.parametrize("how", ["mean", "resample", "zero"])
def test_empty_node_list_gives_exactly_zero(how):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(4, seed=8)
    res = cp.ablate(hf, prompts, [], cp.metrics.logit(7), how=how, tokenizer=tok, progress=False)
    assert np.array_equal(res.effect, np.zeros(4)) and res.nodes == []
    for i, ids in enumerate(as_id_lists(prompts, tok)):
        assert abs(res.baseline[i] - float(reference.hook_acts(hf, "gpt2", ids, N_HEADS)["logits"][7])) < 1e-5


def test_resample_donors_differ_from_the_prompt_and_follow_the_seed():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(7, seed=9)
    metric = cp.metrics.logit(7)
    draws = [cp.ablate(hf, prompts, [cp.MLP(0)], metric, how="resample", seed=s, tokenizer=tok,
                       progress=False).donors for s in range(6)]
    for d in draws:
        assert d.shape == (7,) and (d != np.arange(7)).all() and ((0 <= d) & (d < 7)).all()
    assert len({tuple(d) for d in draws}) > 1
    again = cp.ablate(hf, prompts, [cp.MLP(0)], metric, how="resample", seed=3, tokenizer=tok, progress=False)
    assert np.array_equal(again.donors, draws[3])
    # the very same list given as reference counts as no reference: still j != i
    same = cp.ablate(hf, prompts, [cp.MLP(0)], metric, how="resample", reference=prompts, seed=3, tokenizer=tok,
                     progress=False)
    assert np.array_equal(same.donors, draws[3])
    ref = tiny.prompts(3, seed=10)
    other = cp.ablate(hf, prompts, [cp.MLP(0)], metric, how="resample", reference=ref, tokenizer=tok, progress=False)
    assert ((0 <= other.donors) & (other.donors < 3)).all()


def test_kl_outcome_compares_with_the_unablated_row():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(3, seed=11)
    res = cp.ablate(hf, prompts, NODES, cp.metrics.kl_to_clean(), how="zero", tokenizer=tok, progress=False)
    assert np.array_equal(res.baseline, np.zeros(3))
    for i, ids in enumerate(as_id_lists(prompts, tok)):
        lp = torch.log_softmax(_hand_ablated_logits(hf, "llama", ids, {n: 0.0 for n in NODES}), -1)
        lq = torch.log_softmax(reference.hook_acts(hf, "llama", ids, N_HEADS)["logits"], -1)
        assert res.values[i] > 0 and abs(res.values[i] - float((lq.exp() * (lq - lp)).sum())) < 1e-5


def test_per_prompt_metric_follows_each_prompt():
    from confounded_patching.datasets import answer_logit_diff

    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(4, seed=12)
    answers, wrong = [40, 50, 60, 70], [41, 51, 61, 71]
    both = cp.ablate(hf, prompts, NODES, answer_logit_diff(answers, wrong), batch_size=3, tokenizer=tok,
                     progress=False)
    for i in range(4):
        one = cp.ablate(hf, prompts[i:i + 1], NODES, cp.metrics.logit_diff(answers[i], wrong[i]), reference=prompts,
                        tokenizer=tok, progress=False)
        np.testing.assert_allclose([both.values[i], both.baseline[i]], [one.values[0], one.baseline[0]],
                                   rtol=1e-5, atol=1e-5)


def test_result_summary_dataframe_and_roundtrip(tmp_path):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=13)
    res = cp.ablate(hf, prompts, NODES, cp.metrics.logit(7), how="resample", tokenizer=tok, progress=False)
    assert res.mean_effect == pytest.approx(float(np.mean(res.values - res.baseline)))
    assert res.se == pytest.approx(float(np.std(res.effect, ddof=1) / np.sqrt(5)))
    df = res.to_dataframe()
    assert len(df) == 5 and df["donor"].tolist() == res.donors.tolist()
    np.testing.assert_array_equal(df["effect"].to_numpy(), res.effect)
    back = cp.AblationResult.load(res.save(tmp_path / "abl"))
    assert back.nodes == NODES and back.how == "resample" and back.outcome == res.outcome
    for name in ("values", "baseline", "donors"):
        assert np.array_equal(getattr(back, name), getattr(res, name))
    zero = cp.ablate(hf, prompts[:1], NODES, cp.metrics.logit(7), how="zero", tokenizer=tok, progress=False)
    back = cp.AblationResult.load(zero.save(tmp_path / "zero.npz"))
    assert back.donors is None and np.isnan(back.se)


@pytest.mark.parametrize("how", ["mean", "resample"])
def test_ablation_curve_equals_ablating_each_top_k(how):
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=14)
    metric = cp.metrics.logit_diff("w3", "w4")
    curve = cp.ablation_curve(hf, prompts, NODES, metric, ks=(0, 2, 7, 2), how=how, tokenizer=tok, progress=False)
    assert list(curve) == [0, 2, 7]
    assert np.array_equal(curve[0].effect, np.zeros(5))
    for k in (2, 7):
        one = cp.ablate(hf, prompts, NODES[:k], metric, how=how, tokenizer=tok, progress=False)
        assert curve[k].nodes == NODES[:k]
        np.testing.assert_allclose(curve[k].values, one.values, rtol=1e-6, atol=1e-6)
        if how == "resample":
            assert np.array_equal(curve[k].donors, one.donors)


# ---------------------------------------------------------------- bad input

def test_bad_arguments_are_rejected_with_clear_messages():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts, metric = tiny.prompts(3, seed=15), cp.metrics.logit(7)
    run = lambda **kw: cp.ablate(hf, kw.pop("prompts", prompts), kw.pop("nodes", [cp.MLP(0)]), metric,
                                 tokenizer=tok, progress=False, **kw)
    with pytest.raises(cp.InputError, match=r"how must be one of \('mean', 'resample', 'zero'\); received 'median'"):
        run(how="median")
    for how in ("mean", "resample"):
        with pytest.raises(cp.InputError, match=rf"nodes\[1\] = Head\(0, 1, pos=None\): how='{how}' needs an integer "
                                                r"position .*received pos=None"):
            run(nodes=[cp.MLP(0), cp.Head(0, 1, None)], how=how)
    with pytest.raises(cp.InputError, match=r"reference is used by how='mean' and how='resample' only; how='zero' "
                                            r"received reference=list of length 3"):
        run(how="zero", reference=prompts)
    with pytest.raises(cp.InputError, match="reference must contain at least one prompt"):
        run(reference=[])
    with pytest.raises(cp.InputError, match=r"reference: position -3 is beyond prompt 0's length: it has 2 tokens"):
        run(nodes=[cp.MLP(0, -3)], reference=["w1 w2"])
    with pytest.raises(cp.InputError, match=r"position 9 is beyond prompt 0's length"):
        run(nodes=[cp.MLP(0, 9)], how="zero")
    with pytest.raises(cp.InputError, match=r"so prompts must hold at least 2 prompts; received 1"):
        run(prompts=prompts[:1], how="resample")
    for bad in (0, True, 2.0):
        with pytest.raises(cp.InputError, match=rf"batch_size must be an int >= 1; received {bad!r}"):
            run(batch_size=bad)
    with pytest.raises(cp.InputError, match=r"seed must be an int >= 0; received -1"):
        run(seed=-1)
    with pytest.raises(cp.InputError, match=r"nodes must be a list of nodes \(MLP, Head, Resid\); received 'MLP0'"):
        run(nodes="MLP0")
    with pytest.raises(cp.InputError, match="nodes contains duplicate nodes"):
        run(nodes=[cp.MLP(0), cp.MLP(0)])
    with pytest.raises(cp.InputError, match=r"has layer 5, but the model has 2 layers"):
        run(nodes=[cp.MLP(5)])
    with pytest.raises(cp.InputError, match=r"outcome must be a callable on logits"):
        cp.ablate(hf, prompts, [cp.MLP(0)], "logit_diff", tokenizer=tok)


def test_bad_curve_arguments_are_rejected():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts, metric = tiny.prompts(3, seed=16), cp.metrics.logit(7)
    with pytest.raises(cp.InputError, match=r"ks must hold ints in \[0, 7\] \(the number of ranked_nodes\); "
                                            r"received 10"):
        cp.ablation_curve(hf, prompts, NODES, metric, tokenizer=tok)  # default ks=(1, 5, 10, 20)
    with pytest.raises(cp.InputError, match=r"ks must be a sequence of ints; received 5"):
        cp.ablation_curve(hf, prompts, NODES, metric, ks=5, tokenizer=tok)
    with pytest.raises(cp.InputError, match="ks must name at least one k"):
        cp.ablation_curve(hf, prompts, NODES, metric, ks=(), tokenizer=tok)
    with pytest.raises(cp.InputError, match=r"ranked_nodes\[0\] = MLP\(0, pos=None\): how='mean' needs"):
        cp.ablation_curve(hf, prompts, [cp.MLP(0, None)], metric, ks=(1,), tokenizer=tok)


def test_reference_as_collected_activations_equals_reference_prompts():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts, metric = tiny.prompts(5, seed=3), cp.metrics.logit_diff(40, 41)
    nodes = [cp.Head(1, 3, -1), cp.MLP(0, -1), cp.Resid(1, -2)]
    acts = cp.collect(hf, prompts, nodes, tokenizer=tok, progress=False)
    a = cp.ablate(hf, prompts, nodes, metric, tokenizer=tok, progress=False)
    b = cp.ablate(hf, prompts, nodes, metric, reference=acts, tokenizer=tok, progress=False)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-5, atol=1e-6)
    assert np.abs(a.effect).max() > 1e-4
    r = cp.ablate(hf, prompts, nodes, metric, how="resample", reference=acts, seed=1, tokenizer=tok, progress=False)
    hand = cp.ablate(hf, prompts, nodes, metric, how="resample", reference=[prompts[j] for j in range(5)], seed=1,
                     tokenizer=tok, progress=False)
    np.testing.assert_array_equal(r.donors, hand.donors)
    np.testing.assert_allclose(r.values, hand.values, rtol=1e-5, atol=1e-6)
    with pytest.raises(cp.InputError, match="do not hold"):
        cp.ablate(hf, prompts, [cp.MLP(1, -1)], metric, reference=acts, tokenizer=tok, progress=False)
