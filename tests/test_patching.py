"""Classic activation patching against independent references (TransformerLens, hand-written hooks)."""

import nnsight
import numpy as np
import pytest
import torch

import confounded_patching as cp
import reference
import tiny


CLEAN = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25]])


CORRUPT = torch.tensor([[5, 6, 30, 8, 9, 10], [11, 40, 13, 14, 15, 16], [20, 21, 22, 50, 24, 25]])


A, B = 40, 41


def _tl_reference(bridge):
    from transformer_lens import patching as tlp

    metric = lambda lg: (lg[:, -1, A] - lg[:, -1, B]).mean()
    _, cache = bridge.run_with_cache(CLEAN)
    return (tlp.get_act_patch_resid_pre(bridge, CORRUPT, cache, metric),
            tlp.get_act_patch_attn_head_out_all_pos(bridge, CORRUPT, cache, metric),
            tlp.get_act_patch_mlp_out(bridge, CORRUPT, cache, metric))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["bridge", "nnsight", "hf"])
def test_patch_equals_transformer_lens_patching(family, backend):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    bridge = tiny.bridge(hf)
    resid_tl, head_tl, mlp_tl = _tl_reference(bridge)
    model = {"bridge": bridge, "nnsight": nnsight.TransformersModel(hf, tokenizer=tok), "hf": hf}[backend]
    seq, n_layers, n_heads = CLEAN.shape[1], 2, 4
    resid = [cp.Resid(l, p) for l in range(n_layers) for p in range(seq)]
    heads = [cp.Head(l, h, None) for l in range(n_layers) for h in range(n_heads)]
    mlps = [cp.MLP(l, p) for l in range(n_layers) for p in range(seq)]
    res = cp.patch(model, CLEAN, CORRUPT, resid + heads + mlps, cp.metrics.logit_diff(A, B), batch_size=7,
                   tokenizer=tok, progress=False)
    mean = torch.tensor(res.raw.mean(0), dtype=torch.float32)
    got = (mean[:len(resid)].view(n_layers, seq), mean[len(resid):len(resid) + len(heads)].view(n_layers, n_heads),
           mean[len(resid) + len(heads):].view(n_layers, seq))
    for ours, theirs in zip(got, (resid_tl, head_tl, mlp_tl)):
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-6)


def test_noise_direction_against_hooks():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    nodes = cp.nodes(hf, positions=(-1, 2))
    res = cp.patch(hf, CLEAN, CORRUPT, nodes, cp.metrics.logit_diff(A, B), direction="noise", tokenizer=tok,
                   progress=False)
    for p in range(CLEAN.shape[0]):
        src = reference.hook_acts(hf, "llama", CORRUPT[p].tolist(), 4)
        for k, node in enumerate(nodes):
            lg = reference.hand_patched_metric(hf, CLEAN[p].tolist(), node, reference.node_value(src, node), 4)
            assert abs(res.raw[p, k] - float(lg[A] - lg[B])) < 1e-5
    assert res.normalization == "(patched − clean) / (clean − corrupt)"


def test_identical_prompts_give_exactly_zero_effect():
    hf, tok = tiny.hf_model("phi3"), tiny.tokenizer()
    res = cp.patch(hf, CLEAN, CLEAN.clone(), cp.nodes(hf, positions=(-1, 0)), cp.metrics.logit_diff(A, B),
                   tokenizer=tok, progress=False)
    assert np.array_equal(res.effects, np.zeros_like(res.effects))
    assert np.array_equal(res.clean, res.corrupt)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_patching_whole_residual_stream_recovers_clean(family):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    nodes = [cp.Resid(0, None), cp.Resid(1, None), cp.Resid(1, -1), cp.MLP(1, None)]
    res = cp.patch(hf, CLEAN, CORRUPT, nodes, cp.metrics.logit_diff(A, B), tokenizer=tok, progress=False)
    np.testing.assert_allclose(res.raw[:, 0], res.clean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.raw[:, 1], res.clean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-3)
    assert not np.allclose(res.raw[:, 2], res.clean)  # one position of the last layer is not the whole stream


def test_kl_to_clean_and_prob_diff():
    hf, tok = tiny.hf_model("qwen2"), tiny.tokenizer()
    res = cp.patch(hf, CLEAN, CORRUPT, [cp.Resid(0, None), cp.MLP(0, -1)], cp.metrics.kl_to_clean(), tokenizer=tok,
                   progress=False)
    assert np.allclose(res.clean, 0, atol=1e-6) and (res.corrupt > 0).all()
    assert np.allclose(res.raw[:, 0], 0, atol=1e-5)
    pd_ = cp.patch(hf, CLEAN, CORRUPT, [cp.MLP(0, -1)], cp.metrics.prob_diff(A, B), tokenizer=tok, progress=False)
    assert np.all(np.abs(pd_.raw) <= 1)


def test_patching_result_roundtrip_and_dataframe(tmp_path):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    res = cp.patch(hf, CLEAN, CORRUPT, cp.nodes(hf), cp.metrics.logit_diff(A, B), tokenizer=tok, progress=False)
    back = cp.PatchingResult.load(res.save(tmp_path / "p.npz"))
    assert back.nodes == res.nodes and np.array_equal(back.raw, res.raw) and back.direction == "denoise"
    df = res.to_dataframe()
    assert len(df) == len(res.nodes) and set(df["method"]) == {"patch:exact"}
    assert len(res.to_dataframe(per_pair=True)) == len(res.nodes) * 3


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_auto_is_attribution_for_heads_and_mlps_and_exact_for_the_residual_stream(tmp_path, direction):
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    nodes = cp.nodes(hf, positions=(-1, 2))  # resid, MLPs and heads, interleaved by layer
    metric = cp.metrics.logit_diff(A, B)
    args = dict(direction=direction, tokenizer=tok, progress=False)
    auto = cp.patch(hf, CLEAN, CORRUPT, nodes, metric, method="auto", **args)
    exact = cp.patch(hf, CLEAN, CORRUPT, nodes, metric, method="exact", **args)
    attr = cp.patch(hf, CLEAN, CORRUPT, nodes, metric, method="attribution", **args)
    resid = np.array([n.kind == "resid" for n in nodes])
    assert auto.method == "auto" and auto.node_methods == ["exact" if r else "attribution" for r in resid]
    np.testing.assert_allclose(auto.raw[:, resid], exact.raw[:, resid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(auto.raw[:, ~resid], attr.raw[:, ~resid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(auto.clean, exact.clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(auto.corrupt, exact.corrupt, rtol=1e-5, atol=1e-6)
    df = auto.to_dataframe()
    assert set(df["method"]) == {"patch:auto"} and list(df["computed"]) == auto.node_methods
    back = cp.PatchingResult.load(auto.save(tmp_path / "auto.npz"))
    assert back.node_methods == auto.node_methods and np.array_equal(back.raw, auto.raw)
    only_heads = cp.patch(hf, CLEAN, CORRUPT, [n for n in nodes if n.kind == "head"], metric, method="auto", **args)
    assert only_heads.method == "attribution"  # one kind: named by the method it used


def test_patching_result_methods_field_is_checked():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    res = cp.patch(hf, CLEAN, CORRUPT, [cp.MLP(0), cp.Resid(1)], cp.metrics.logit_diff(A, B), method="auto",
                   tokenizer=tok, progress=False)
    import dataclasses

    with pytest.raises(cp.InputError, match="field 'methods' must name 'exact' or 'attribution' for each of the 2"):
        dataclasses.replace(res, methods=["exact"])._check()
    with pytest.raises(cp.InputError, match="field 'methods' is required when method is 'auto'"):
        dataclasses.replace(res, methods=None)._check()


def test_whole_model_sweep_is_one_call():
    model = nnsight.TransformersModel(tiny.hf_model("llama"), tokenizer=tiny.tokenizer())
    res = cp.patch(model, ["w1 w2 w3"], ["w1 w5 w3"], metric=cp.metrics.logit_diff("w1", "w2"), progress=False)
    assert len(res.nodes) == len(cp.nodes(model)) and res.raw.shape == (1, len(res.nodes))


def test_unequal_token_lengths_are_rejected():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    with pytest.raises(cp.InputError, match=r"pair 1: clean and corrupt prompts must have equal token length; "
                                            r"received 3 and 2 tokens"):
        cp.patch(hf, ["w1 w2", "w1 w2 w3"], ["w3 w4", "w5 w6"], [cp.MLP(0)], cp.metrics.logit(A), tokenizer=tok)


def test_metric_with_wrong_shape_is_rejected():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    with pytest.raises(cp.InputError, match=r"metric must return a tensor of shape \[batch\] = \[3\].*received"):
        cp.patch(hf, CLEAN, CORRUPT, [cp.MLP(0)], lambda lg: lg[:, A].mean(), tokenizer=tok, progress=False)


def test_unknown_direction_and_method():
    hf = tiny.hf_model("gpt2")
    with pytest.raises(cp.InputError, match=r"direction must be one of \('denoise', 'noise'\); received 'denoising'"):
        cp.patch(hf, CLEAN, CORRUPT, [cp.MLP(0)], cp.metrics.logit(A), direction="denoising")
    with pytest.raises(cp.InputError, match=r"method must be one of \('exact', 'attribution', 'auto'\)"):
        cp.patch(hf, CLEAN, CORRUPT, [cp.MLP(0)], cp.metrics.logit(A), method="fast")


def test_string_metric_tokens_need_a_single_token():
    model = nnsight.TransformersModel(tiny.hf_model("gpt2"), tokenizer=tiny.tokenizer())
    with pytest.raises(cp.InputError, match="must encode to exactly one token"):
        cp.patch(model, ["w1 w2"], ["w1 w3"], [cp.MLP(0)], cp.metrics.logit_diff("w1 w2", "w3"), progress=False)


@pytest.mark.slow
def test_smollm2_matches_a_hand_written_nnsight_loop(smollm2):
    """Residual layer×position and head sweeps in the style of the nnsight causal-mediation tutorial."""
    clean, corrupt = "Paris is in the country of", "Rome is in the country of"
    tok = smollm2.tokenizer
    assert len(tok(clean)["input_ids"]) == len(tok(corrupt)["input_ids"])
    paris, italy = tok.encode(" France")[0], tok.encode(" Italy")[0]
    layers = (0, 7, 15, 29)
    seq = len(tok(clean)["input_ids"])
    n_heads, head_dim = 9, 64

    clean_resid, clean_z = {}, {}
    with torch.no_grad(), smollm2.trace(clean):
        for l in layers:  # forward order
            clean_resid[l] = smollm2.model.layers[l].input.clone().save()
            clean_z[l] = smollm2.model.layers[l].self_attn.o_proj.input.clone().save()
    resid_ref = np.zeros((len(layers), seq))
    for a, l in enumerate(layers):
        for p in range(seq):
            with torch.no_grad(), smollm2.trace(corrupt):
                smollm2.model.layers[l].input[:, p] = clean_resid[l][:, p]
                lg = smollm2.output.logits[0, -1].save()
            resid_ref[a, p] = float(lg[paris] - lg[italy])
    head_ref = np.zeros((len(layers), n_heads))
    for a, l in enumerate(layers):
        for h in range(n_heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            with torch.no_grad(), smollm2.trace(corrupt):
                z = smollm2.model.layers[l].self_attn.o_proj.input
                z[:, :, sl] = clean_z[l][:, :, sl]
                lg = smollm2.output.logits[0, -1].save()
            head_ref[a, h] = float(lg[paris] - lg[italy])

    nodes = [cp.Resid(l, p) for l in layers for p in range(seq)] + [cp.Head(l, h, None) for l in layers
                                                                      for h in range(n_heads)]
    res = cp.patch(smollm2, [clean], [corrupt], nodes, cp.metrics.logit_diff(" France", " Italy"), progress=False)
    ours = res.raw[0]
    np.testing.assert_allclose(ours[:len(layers) * seq].reshape(len(layers), seq), resid_ref, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(ours[len(layers) * seq:].reshape(len(layers), n_heads), head_ref, rtol=1e-4, atol=2e-4)


def test_per_row_metric_follows_each_pair():
    from confounded_patching.datasets import answer_logit_diff

    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    answers, wrong = [40, 50, 60], [41, 51, 61]
    nodes = cp.nodes(hf, positions=(-1,))
    both = cp.patch(hf, CLEAN, CORRUPT, nodes, answer_logit_diff(answers, wrong), batch_size=5, tokenizer=tok,
                    progress=False)
    for p in range(3):
        one = cp.patch(hf, CLEAN[p:p + 1], CORRUPT[p:p + 1], nodes, cp.metrics.logit_diff(answers[p], wrong[p]),
                       tokenizer=tok, progress=False)
        np.testing.assert_allclose(both.raw[p], one.raw[0], rtol=1e-5, atol=1e-5)
    acts = cp.collect(hf, CLEAN, nodes[:1], metric=answer_logit_diff(answers, wrong), batch_size=2, tokenizer=tok,
                      progress=False)
    np.testing.assert_allclose(acts.outcome.numpy(), both.clean, rtol=1e-5, atol=1e-5)


def test_full_logits_metric_sees_every_position():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    first = cp.metrics.full_logits(lambda lg, mask: lg[torch.arange(lg.shape[0]), mask.argmax(1), A], "first")
    last = cp.metrics.full_logits(lambda lg, mask: lg[:, -1, A] - lg[:, -1, B], "last_ld")
    nodes = [cp.Resid(1, 0), cp.Resid(1, -1), cp.MLP(0, -1)]
    res = cp.patch(hf, CLEAN, CORRUPT, nodes, last, tokenizer=tok, progress=False)
    ref = cp.patch(hf, CLEAN, CORRUPT, nodes, cp.metrics.logit_diff(A, B), tokenizer=tok, progress=False)
    np.testing.assert_allclose(res.raw, ref.raw, rtol=1e-5, atol=1e-5)
    # the first position's logits do not depend on a patch at the last position
    res_first = cp.patch(hf, CLEAN, CORRUPT, nodes, first, tokenizer=tok, progress=False)
    np.testing.assert_allclose(res_first.raw[:, 1], res_first.corrupt, rtol=1e-6, atol=1e-6)
    acts = cp.collect(hf, ["w1 w2 w3", "w4 w5"], nodes[:1], metric=first, tokenizer=tok, progress=False)
    assert acts.outcome.shape == (2,)


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_prefix_cache_skips_early_blocks_and_changes_nothing(family, backend):
    hf, tok = tiny.hf_model(family, n_layers=3), tiny.tokenizer()
    model = hf if backend == "hf" else nnsight.TransformersModel(hf, tokenizer=tok)
    layout = cp.models.adapt(hf, tok).spec.layout
    mlp0 = hf.get_submodule(f"{layout.blocks}.0.{layout.mlp}")
    nodes = ([cp.Resid(l, p) for l in range(3) for p in range(6)] + [cp.Head(l, h, None) for l in range(3)
             for h in range(4)] + [cp.MLP(l, -1) for l in range(3)])
    raw, rows = {}, {}
    for cached in (True, False):
        seen = []
        handle = mlp0.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
        try:
            for direction in ("denoise", "noise"):
                raw[cached, direction] = cp.patch(model, CLEAN[:2], CORRUPT[:2], nodes, cp.metrics.logit_diff(A, B),
                                                  direction=direction, batch_size=8, tokenizer=tok, progress=False,
                                                  prefix_cache=cached).raw
        finally:
            handle.remove()
        rows[cached] = sum(seen)
    for direction in ("denoise", "noise"):
        np.testing.assert_allclose(raw[True, direction], raw[False, direction], rtol=1e-5, atol=1e-6)
    if family == "bloom":  # its blocks return a tuple: every row runs from the embeddings
        assert rows[True] >= rows[False]
    else:  # layer-1 and layer-2 rows never reach block 0
        assert rows[True] < rows[False] / 2
