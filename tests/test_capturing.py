"""collect() and capture() against plain torch hooks on each prompt run alone."""

import nnsight
import pytest
import torch

import confounded_patching as cp
import reference
import tiny
from confounded_patching.models.tokens import as_id_lists


POSITIONS = (-1, -2, 0, 1)


def _reference(hf, family, id_lists, nodes, n_heads):
    per_prompt = [reference.hook_acts(hf, family, ids, n_heads) for ids in id_lists]
    return {n: torch.stack([reference.node_value(a, n) for a in per_prompt]) for n in nodes}, per_prompt


def _check(acts, ref, nodes):
    for n in nodes:
        torch.testing.assert_close(acts[n], ref[n], rtol=1e-4, atol=1e-5, msg=lambda m: f"{n!r}: {m}")


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_collect_equals_hooks_on_each_prompt_alone(family, padding_side):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    prompts = tiny.prompts(6, seed=1, lo=2, hi=9)
    ids = as_id_lists(prompts, tok)
    assert len({len(i) for i in ids}) > 2  # ragged
    model = nnsight.TransformersModel(hf, tokenizer=tok)
    nodes = cp.nodes(model, positions=POSITIONS)
    metric = cp.metrics.logit_diff("w3", "w4")
    acts = cp.collect(model, prompts, nodes, batch_size=4, padding_side=padding_side, metric=metric, progress=False)
    spec = cp.models.adapt(model).spec
    ref, per_prompt = _reference(hf, family, ids, nodes, spec.n_heads)
    _check(acts, ref, nodes)
    i3, i4 = tok.convert_tokens_to_ids(["w3", "w4"])
    expected = torch.stack([a["logits"][i3] - a["logits"][i4] for a in per_prompt])
    torch.testing.assert_close(acts.outcome, expected, rtol=1e-4, atol=1e-5)
    assert acts[cp.Head(0, 0)].shape == (6, spec.head_dim)
    assert acts[cp.MLP(1)].shape == (6, spec.d_model)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_plain_hf_and_nnsight_wrappers_agree_with_hooks(family):
    hf, tok = tiny.hf_model(family), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=2)
    ids = as_id_lists(prompts, tok)
    nodes = cp.nodes(hf, positions=(-1, -3))
    ref, _ = _reference(hf, family, ids, nodes, cp.models.adapt(hf).spec.n_heads)
    _check(cp.collect(hf, prompts, nodes, tokenizer=tok, batch_size=5, progress=False), ref, nodes)
    _check(cp.collect(nnsight.NNsight(hf), prompts, nodes, tokenizer=tok, batch_size=5, progress=False), ref, nodes)


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_collect_through_transformer_lens_bridge(family, padding_side):
    hf = tiny.hf_model(family)
    bridge = tiny.bridge(hf)
    ids = [list(range(5, 5 + n)) for n in (3, 7, 5, 8)]
    nodes = cp.nodes(bridge, positions=(-1, -3, 0))
    acts = cp.collect(bridge, ids, nodes, batch_size=4, padding_side=padding_side, progress=False)
    ref, _ = _reference(hf, family, ids, nodes, cp.models.adapt(hf).spec.n_heads)
    _check(acts, ref, nodes)


def test_capture_inside_a_users_trace_matches_collect():
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    model = nnsight.TransformersModel(hf, tokenizer=tok)
    nodes = cp.nodes(model, positions=(-1, -2))
    prompts = ["w1 w2 w3 w4 w5", "w6 w7 w8"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad(), model.trace(input_ids=enc.input_ids, attention_mask=enc.attention_mask):
        store = cp.capture(model, nodes)
        model.model.layers[1].mlp.output[:] = 0  # the user's own intervention, after the capture
        logits = model.output.logits.save()
    ref, _ = _reference(hf, "llama", as_id_lists(prompts, tok), nodes, 4)
    _check(store.to_activations(), ref, nodes)
    assert torch.isfinite(logits).all()


def test_activations_save_load_roundtrip(tmp_path):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    nodes = cp.nodes(hf, kinds=("head", "mlp"))
    acts = cp.collect(hf, tiny.prompts(4), nodes, tokenizer=tok, embed_layer=1, progress=False)
    path = acts.save(tmp_path / "acts")
    back = cp.Activations.load(path)
    assert back.nodes == nodes and back.prompts == acts.prompts
    for n in nodes:
        assert torch.equal(back[n], acts[n])
    assert torch.equal(back.embedding, acts.embedding)
    assert b"pickle" not in path.read_bytes()[:0]  # npz members only; load uses allow_pickle=False
    df = acts.to_dataframe()
    assert len(df) == len(nodes) * 4 and {"node", "layer", "norm"} <= set(df.columns)


@pytest.fixture(scope="module")
def llama():
    return nnsight.TransformersModel(tiny.hf_model("llama"), tokenizer=tiny.tokenizer())


def test_layer_out_of_range_is_named(llama):
    with pytest.raises(cp.InputError, match=r"layer 5, but the model has 2 layers \(valid: 0..1\)"):
        cp.collect(llama, ["w1 w2"], [cp.MLP(5)])


def test_head_out_of_range_is_named(llama):
    with pytest.raises(cp.InputError, match=r"head 4, but the model has 4 heads per layer"):
        cp.collect(llama, ["w1 w2"], [cp.Head(0, 4)])


def test_position_beyond_prompt_length(llama):
    with pytest.raises(cp.InputError, match=r"position -4 is beyond prompt 1's length: it has 2 tokens"):
        cp.collect(llama, ["w1 w2 w3 w4", "w1 w2"], [cp.Resid(0, -4)])
    with pytest.raises(cp.InputError, match=r"position 3 is beyond prompt 0's length"):
        cp.collect(llama, ["w1 w2 w3", "w1 w2 w3 w4"], [cp.Resid(0, 3)])


def test_empty_prompt_list(llama):
    with pytest.raises(cp.InputError, match="prompts must contain at least one prompt; received an empty list"):
        cp.collect(llama, [], [cp.MLP(0)])
    with pytest.raises(cp.InputError, match="nodes must contain at least one node"):
        cp.collect(llama, ["w1"], [])


def test_single_string_is_rejected(llama):
    with pytest.raises(cp.InputError, match="not a single string"):
        cp.collect(llama, "w1 w2", [cp.MLP(0)])


@pytest.mark.slow
def test_smollm2_all_nodes_against_hooks(smollm2):
    prompts = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
               "The nurse said that"]
    nodes = cp.nodes(smollm2, positions=(-1, -2))
    assert len(nodes) == 2 * 30 * (1 + 9 + 1)
    acts = cp.collect(smollm2, prompts, nodes, batch_size=3, progress=False)
    hf = smollm2._module
    ids = as_id_lists(prompts, smollm2.tokenizer)
    ref, _ = _reference(hf, "smollm2", ids, nodes, 9)
    for n in nodes:  # values reach ~250 in late layers: relative tolerance
        torch.testing.assert_close(acts[n], ref[n], rtol=1e-3, atol=2e-3, msg=lambda m: f"{n!r}: {m}")
