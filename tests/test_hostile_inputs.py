"""Hostile input at the public boundary: every function either computes the right thing or raises the
library's error, whose message is asserted. NaN/inf, empty, wrong-length, wrong-dtype, out-of-range and
adversarial files; property-based where the input space is large. Tiny random models only."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confounded_patching as cp
import tiny
from confounded_patching import InputError
from confounded_patching.interventions.resample import check_pairs

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = " ".join(f"w{3 + i % 90}" for i in range(100))  # 100 tokens; the tiny models hold 64 positions
NAN_OR_INF = st.sampled_from([math.nan, math.inf, -math.inf])


@pytest.fixture(scope="module")
def gpt2():
    return tiny.hf_model("gpt2"), tiny.tokenizer()


@pytest.fixture(scope="module")
def data():
    """A confounded problem: query q, node n, outcome y, topics t (200 prompts)."""
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 200)
    q = rng.normal(size=(200, 4)) + t[:, None] * 0.5
    n = rng.normal(size=(200, 4)) + 0.3 * q
    y = n[:, 0] * q[:, 0] + t + 0.1 * rng.normal(size=200)
    return q, n, y, t


AIE = dict(K=20, n_boot=20, d_q=3, d_n=3)


@pytest.fixture(scope="module")
def base(data):
    return cp.aie(*data, **AIE)


class ForwardCounter:
    """Counts forward passes of a torch module (a hook on it)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


# ----------------------------------------------------------------------------- nodes


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_layers=-3), r"n_layers must be a positive int \(or a model\); received -3"),
    (dict(n_layers=0), r"n_layers must be a positive int .*received 0"),
    (dict(n_layers=True), r"n_layers must be a positive int .*received True"),
    (dict(n_layers=2.0), r"n_layers must be a positive int .*received 2.0"),
    (dict(n_layers=2, n_heads=-1, kinds=("head",)), r"n_heads must be a positive int .*received -1"),
    (dict(n_layers=2, n_heads=0, kinds=("head",)), r"n_heads must be a positive int .*received 0"),
    (dict(n_layers=2, positions=(True,)), r"positions must hold ints or None; received True"),
])
def test_nodes_refuses_sizes_that_would_give_no_nodes(kwargs, message):
    with pytest.raises(InputError, match=message):
        cp.nodes(**kwargs)


# ----------------------------------------------------------------------------- token ids and context


@FAST
@given(bad=st.one_of(st.integers(-10**6, -1), st.integers(100, 10**6)), where=st.integers(0, 2))
def test_token_ids_outside_the_vocabulary_are_named_before_any_forward_pass(gpt2, bad, where):
    model, tok = gpt2
    ids = [5, 6, 7]
    ids[where] = bad
    counter = ForwardCounter(model)
    try:
        with pytest.raises(InputError, match=rf"prompts\[1\] holds token id {bad} at position {where}, outside the "
                                             r"model's vocabulary of 100 ids \(valid: 0..99\)"):
            cp.collect(model, [[3, 4, 5], ids], [cp.MLP(0)], tokenizer=tok, progress=False)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


@pytest.mark.parametrize("family, key", [("gpt2", r"config.n_positions"), ("llama", r"config.max_position_embeddings")])
def test_prompts_longer_than_the_context_are_refused_for_every_position_scheme(family, key):
    model, tok = tiny.hf_model(family), tiny.tokenizer()
    with pytest.raises(InputError, match=rf"prompts\[1\] has 100 tokens, but the model's context holds 64 positions; "
                                         rf"shorten the prompt \({key}"):
        cp.collect(model, ["w1 w2", LONG], [cp.MLP(0)], tokenizer=tok, progress=False)


@pytest.mark.parametrize("call, message", [
    (lambda m, t: cp.patch(m, [LONG], [LONG], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=t, progress=False),
     r"clean\[0\] has 100 tokens, but the model's context holds 64"),
    (lambda m, t: cp.resample(m, [LONG, "w1 w2 w3"], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=t,
                              progress=False), r"prompts\[0\] has 100 tokens, but the model's context holds 64"),
    (lambda m, t: cp.resample(m, [[3, 4, 500], [3, 4, 5]], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=t,
                              progress=False), r"prompts\[0\] holds token id 500 at position 2"),
    (lambda m, t: cp.ablate(m, [LONG], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=t, progress=False),
     r"prompts\[0\] has 100 tokens"),
    (lambda m, t: cp.patch(m, [[3, 4, 5]], [[3, -4, 5]], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=t,
                           progress=False), r"corrupt\[0\] holds token id -4 at position 1"),
])
def test_every_entry_point_names_the_prompt_that_does_not_fit(gpt2, call, message):
    with pytest.raises(InputError, match=message):
        call(*gpt2)


@pytest.mark.parametrize("metric, message", [
    (lambda: cp.metrics.logit_diff(1, -1), r"token id must be >= 0 \(negative ids are not counted from the end"),
    (lambda: cp.metrics.logit_diff(1, 10**6), r"reads token id 1000000, outside the model's vocabulary of 100 ids"),
    (lambda: cp.metrics.logit_diff("w1", "zzz"), r"token 'zzz' is not in the tokenizer's vocabulary: it encodes to "
                                                 r"the unknown token '<unk>'"),
])
def test_metric_tokens_outside_the_vocabulary_are_refused(gpt2, metric, message):
    model, tok = gpt2
    with pytest.raises(InputError, match=message):
        cp.collect(model, ["w1 w2 w3"], [cp.MLP(0)], tokenizer=tok, metric=metric(), progress=False)


def test_unknown_words_in_prompts_are_reported(gpt2):
    model, tok = gpt2
    with pytest.warns(UserWarning, match=r"prompts: 1 prompt\(s\) hold words the tokenizer does not know, encoded "
                                         r"as its unknown token '<unk>'"):
        cp.collect(model, ["w1 zzz w3", "w1 w2 w3"], [cp.MLP(0)], tokenizer=tok, progress=False)


# ----------------------------------------------------------------------------- metric values


@FAST
@given(value=NAN_OR_INF, row=st.integers(0, 2), entry=st.sampled_from(["collect", "patch", "ablate"]))
def test_a_metric_that_is_not_finite_is_refused_naming_the_prompt(gpt2, value, row, entry):
    model, tok = gpt2
    prompts = ["w1 w2 w3", "w4 w5 w6", "w7 w8 w9"]

    def metric(lg):
        out = lg[:, 0].clone()
        out[row] = value
        return out

    kind = "NaN" if math.isnan(value) else "inf"
    with pytest.raises(InputError, match=rf"is not finite \({kind}\) on prompt\(s\) \[{row}\].*a metric must return "
                                         r"a finite number per prompt"):
        if entry == "collect":
            cp.collect(model, prompts, [cp.MLP(0)], tokenizer=tok, metric=metric, progress=False)
        elif entry == "patch":
            cp.patch(model, prompts, ["w10 w11 w12"] * 3, [cp.MLP(0)], metric, tokenizer=tok, progress=False)
        else:
            cp.ablate(model, prompts, [cp.MLP(0)], metric, tokenizer=tok, progress=False)


@pytest.mark.parametrize("metric, message", [
    (lambda lg: lg[:, 0] + 1j, r"must return real numbers; received Tensor of shape \(2,\) and dtype torch.complex64"),
    (lambda lg: lg[:1, 0], r"must return a tensor of shape \[batch\] = \[2\]"),
    (lambda lg: "x", r"must return a tensor of shape \[batch\] = \[2\]; received 'x'"),
])
def test_a_metric_of_the_wrong_shape_or_kind_is_refused(gpt2, metric, message):
    model, tok = gpt2
    with pytest.raises(InputError, match=message):
        cp.collect(model, ["w1 w2 w3", "w4 w5 w6"], [cp.MLP(0)], tokenizer=tok, metric=metric, progress=False)


def test_patching_a_prompt_with_itself_warns_that_the_score_is_undefined(gpt2):
    model, tok = gpt2
    with pytest.warns(UserWarning, match=r"clean and corrupt are the same prompt in 1 of 1 pair\(s\)"):
        res = cp.patch(model, ["w1 w2 w3"], ["w1 w2 w3"], [cp.MLP(0)], cp.metrics.logit("w3"), tokenizer=tok,
                       progress=False)
    assert np.isnan(res.score).all()


# ----------------------------------------------------------------------------- bool vs int


@pytest.mark.parametrize("call, message", [
    (lambda m, t: cp.collect(m, ["w1 w2"], [cp.MLP(0)], batch_size=True, tokenizer=t),
     r"batch_size must be a positive int; received True"),
    (lambda m, t: cp.patch(m, ["w1 w2"], ["w3 w4"], [cp.MLP(0)], cp.metrics.logit("w3"), batch_size=True,
                           tokenizer=t), r"batch_size must be a positive int; received True"),
    (lambda m, t: cp.collect(m, ["w1 w2"], [cp.MLP(0)], tokenizer=t, progress=1),
     r"progress must be True or False; received 1"),
    (lambda m, t: cp.resample(m, ["w1 w2", "w3 w4"], [cp.MLP(0)], cp.metrics.logit("w3"), n_pairs=True,
                              tokenizer=t), r"n_pairs must be a positive int or 'all'; received True"),
    (lambda m, t: cp.resample(m, ["w1 w2", "w3 w4"], [cp.MLP(0)], cp.metrics.logit("w3"), seed="0", tokenizer=t),
     r"seed must be an int >= 0; received '0'"),
    (lambda m, t: cp.resample(m, ["w1 w2", "w3 w4"], [cp.MLP(0)], cp.metrics.logit("w3"), seed=-1, tokenizer=t),
     r"seed must be an int >= 0; received -1"),
    (lambda m, t: cp.collect(m, ["w1 w2"], [cp.MLP(True)], tokenizer=t), r"layer must be an int; received True"),
])
def test_bools_are_not_ints_and_ints_are_not_bools(gpt2, call, message):
    with pytest.raises(InputError, match=message):
        call(*gpt2)


@pytest.mark.parametrize("option", ["calibrate", "augment"])
@pytest.mark.parametrize("value", [1, 0, "yes", np.array([True])])
def test_auto_or_bool_options_refuse_ints(data, option, value):
    with pytest.raises(InputError, match=rf"{option} must be 'auto', True or False; received"):
        cp.aie(*data, **AIE, **{option: value})


def test_balance_features_flags_refuse_ints(data):
    q, _, _, t = data
    with pytest.raises(InputError, match=r"squares must be True or False; received 1"):
        cp.balance_features(q, t, squares=1)
    with pytest.raises(InputError, match=r"standardize must be True or False; received 0"):
        cp.balance_features(q, t, standardize=0)


# ----------------------------------------------------------------------------- resample pairs and strata


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.lists(st.integers(-8, 12), min_size=2, max_size=2), min_size=1, max_size=6))
def test_pairs_are_in_range_and_distinct_or_refused(pairs):
    arr = np.array(pairs)
    valid = ((arr >= 0) & (arr < 6)).all() and (arr[:, 0] != arr[:, 1]).all()
    if valid:
        np.testing.assert_array_equal(check_pairs(pairs, 6), arr)
    else:
        with pytest.raises(InputError, match=r"pairs\[\d+\] = \[-?\d+, -?\d+\]: (prompt indices must lie in \[0, 5\] "
                                             r"\(negative indices are not counted from the end\)|a prompt cannot be "
                                             r"its own donor)"):
            check_pairs(pairs, 6)


@pytest.mark.parametrize("pairs, message", [
    ([[0, -1]], r"pairs\[0\] = \[0, -1\]: prompt indices must lie in \[0, 5\]"),
    ([[2, 2]], r"pairs\[0\] = \[2, 2\]: a prompt cannot be its own donor"),
    ([[0, 99]], r"pairs\[0\] = \[0, 99\]: prompt indices must lie in \[0, 5\]"),
    ([0, 1, 2], r"pairs must have shape \[n_pairs, 2\] with n_pairs >= 1; received list of length 3"),
    ([[0.5, 1]], r"pairs must be integer prompt indices"),
    ([], r"pairs must have shape \[n_pairs, 2\]"),
])
def test_resample_refuses_bad_pairs_before_any_forward_pass(gpt2, pairs, message):
    model, tok = gpt2
    counter = ForwardCounter(model)
    try:
        with pytest.raises(InputError, match=message):
            cp.resample(model, tiny.prompts(6), [cp.MLP(0)], cp.metrics.logit("w3"), pairs=pairs, tokenizer=tok,
                        progress=False)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


@pytest.mark.parametrize("strata, message", [
    ([float("nan")] * 6, r"strata must label every prompt; prompt 0 has nan \(6 prompt\(s\) unlabelled\)"),
    ([None] * 6, r"strata must label every prompt; prompt 0 has None"),
    (list("abc"), r"strata must have one label per prompt \(6\); received 3 labels"),
    (list("abcdef"), r"every stratum has a single prompt"),
])
def test_resample_refuses_bad_strata(gpt2, strata, message):
    model, tok = gpt2
    with pytest.raises(InputError, match=message):
        cp.resample(model, tiny.prompts(6), [cp.MLP(0)], cp.metrics.logit("w3"), strata=strata, tokenizer=tok,
                    progress=False)


def test_a_singleton_stratum_is_reported(gpt2):
    model, tok = gpt2
    with pytest.warns(UserWarning, match=r"strata: 1 stratum\(s\) hold a single prompt \(prompt\(s\) \[5\]\)"):
        cp.resample(model, tiny.prompts(6), [cp.MLP(0)], cp.metrics.logit("w3"), strata=list("aaaaaz"), n_pairs=10,
                    tokenizer=tok, progress=False)


# ----------------------------------------------------------------------------- estimator


@FAST
@given(which=st.sampled_from(["query", "node", "outcome", "confounder"]), value=NAN_OR_INF,
       row=st.integers(0, 199))
def test_aie_refuses_nan_or_inf_naming_the_argument(data, which, value, row):
    args = dict(zip(("query", "node", "outcome"), (a.astype(float).copy() for a in data[:3])))
    args["confounder"] = np.c_[data[3], np.arange(200.0)] if which == "confounder" else data[3]
    args[which].reshape(200, -1)[row, 0] = value
    name = "nodes[0]" if which == "node" else which
    with pytest.raises(InputError, match=rf"{re.escape(name)} must be finite; received .* with NaN or inf entries"):
        cp.aie(args["query"], args["node"], args["outcome"], args["confounder"], **AIE)


@pytest.mark.parametrize("what", ["constant query", "constant node", "node is the query"])
def test_unidentified_nodes_get_nan_and_a_warning(data, what):
    q, n, y, t = data
    q, n = {"constant query": (np.ones((200, 4)), n), "constant node": (q, np.ones((200, 4))),
            "node is the query": (q, q.copy())}[what]
    with pytest.warns(UserWarning, match=r"adjusted EB-AIE: 1 of 1 node\(s\) are not identified by the data and get "
                                         r"nan"):
        r = cp.aie(q, n, y, t, **AIE)
    assert math.isnan(r.value) and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert r.status == "unidentified" and not r.reliable


@FAST
@given(power=st.sampled_from([-200, -160, -30, 30, 160, 200]), which=st.sampled_from(["q", "n", "both"]))
def test_aie_is_invariant_to_the_scale_of_query_and_node(data, base, power, which):
    q, n, y, t = data
    c = 10.0 ** power
    r = cp.aie(q * c if which != "n" else q, n * c if which != "q" else n, y, t, **AIE)
    assert r.value == pytest.approx(base.value, rel=1e-9, abs=1e-12)
    assert r.ci_low == pytest.approx(base.ci_low, rel=1e-9, abs=1e-12)


@FAST
@given(power=st.sampled_from([-300, -200, -30, 30, 200, 300]))
def test_aie_scales_with_the_outcome_at_any_magnitude(data, base, power):
    q, n, y, t = data
    c = 10.0 ** power
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow in the bootstrap se
        r = cp.aie(q, n, y * c, t, **AIE)
    for field in ("value", "ci_low", "ci_high", "se"):
        assert getattr(r, field) / c == pytest.approx(getattr(base, field), rel=1e-9), field


def test_aie_of_an_outcome_scaled_by_a_power_of_two_is_exact(data, base):
    q, n, y, t = data
    r = cp.aie(q, n, y * 2.0 ** 700, t, **AIE)
    assert r.value / 2.0 ** 700 == base.value and r.se / 2.0 ** 700 == base.se


@pytest.mark.parametrize("dtype", [np.float16, torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float64(data, base, dtype):
    q, n, y, t = data
    if isinstance(dtype, torch.dtype):
        q, n = torch.tensor(q, dtype=dtype), torch.tensor(n, dtype=dtype)
    else:
        q, n = q.astype(dtype), n.astype(dtype)
    r = cp.aie(q, n, y, t, **AIE)
    assert r.status == "converged" and r.value == pytest.approx(base.value, abs=0.01)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_solves_are_refused_with_the_reason(data, dtype):
    with pytest.raises(InputError, match=rf"dtype must be torch.float32 or torch.float64; received {dtype}: half "
                                         r"precision keeps about 3 significant digits"):
        cp.aie(*data, **AIE, dtype=dtype)
    with pytest.raises(InputError, match=rf"dtype must be torch.float32 or torch.float64; received {dtype}"):
        cp.EntropyBalancer(dtype=dtype).fit(np.random.default_rng(0).normal(size=(50, 3)))


@pytest.mark.parametrize("which", ["query", "node", "outcome"])
def test_complex_inputs_are_refused(data, which):
    args = dict(zip(("query", "node", "outcome"), data[:3]))
    args[which] = args[which].astype(complex)
    name = "nodes[0]" if which == "node" else which
    with pytest.raises(InputError, match=rf"{re.escape(name)} must be real; received ndarray .* complex128"):
        cp.aie(args["query"], args["node"], args["outcome"], data[3], **AIE)


def test_topic_ids_cast_to_float_are_reported(data, base):
    q, n, y, t = data
    with pytest.warns(UserWarning, match=r"confounder is a float vector holding only 3 whole numbers \(0, 1, 2\): it "
                                         r"is read as one continuous covariate, not as topic labels"):
        cp.aie(q, n, y, t.astype(float), **AIE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cp.aie(q, n, y, t.astype(float), **AIE, confounder_kind="labels").value == base.value
        cp.aie(q, n, y, t.astype(float) + 0.5 * np.random.default_rng(1).normal(size=200), **AIE)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed="0"), r"seed must be an int >= 0; received '0'"),
    (dict(seed=True), r"seed must be an int >= 0; received True"),
    (dict(K=True), r"K must be a positive int; received True"),
    (dict(d_q=True), r"d_q must be a positive int; received True"),
    (dict(n_boot=True), r"n_boot must be an int >= 0; received True"),
    (dict(gamma=float("nan")), r"gamma must be 'auto' or a number >= 0; received nan"),
    (dict(dtype="float32"), r"dtype must be a torch floating dtype"),
])
def test_aie_settings_are_typed(data, kwargs, message):
    with pytest.raises(InputError, match=message):
        cp.aie(*data, **{**AIE, **kwargs})


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_aie_refuses_inputs_of_the_wrong_length(data, cut):
    args = list(data)
    args[cut] = args[cut][:150]
    name = ("query", "nodes[0]", "query")[cut]  # a short outcome makes the query the one that disagrees
    with pytest.raises(InputError, match=rf"{re.escape(name)} must have one row per prompt"):
        cp.aie(*args, **AIE)


# ----------------------------------------------------------------------------- mediate: checked before the capture


@pytest.fixture(scope="module")
def small():
    model, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    return model, tok, tiny.prompts(60, seed=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(confounder=np.arange(60) % 3), r"need at least 2 \* \(2 d_q \+ d_z\) \+ 10 = 164 prompts for d_q = 25 "
                                         r"query and d_z = 27 node/confounder dims; received 60 prompts"),
    (dict(query=np.zeros((60, 8)), d_q=3, d_n=3, n_topics=31),
     r"confounder='kmeans' with n_topics = 31 needs at least 2 \* n_topics = 62 prompts; received 60"),
    (dict(query=np.zeros((50, 8))), r"query must have one row per prompt \(60\); received ndarray of shape \(50, 8\)"),
    (dict(query=np.zeros((60, 8)), estimator="HT"), r"estimator must be one of \('ht', 'hajek'\); received 'HT'"),
    (dict(query=np.zeros((60, 8)), n_topics=1), r"n_topics must be an int >= 2; received 1"),
    (dict(query=np.zeros((60, 8)), unadjusted=1), r"unadjusted must be True or False; received 1"),
    (dict(query=np.zeros((60, 8)), d_q=3, d_n=3, outcome=np.zeros(5)),
     r"outcome as labels must have one value per prompt \(60\)"),
    (dict(query=np.zeros((60, 8)), d_q=3, d_n=3, outcome=["yes", "no"] * 30), r"outcome as labels must be numbers"),
])
def test_mediate_refuses_what_it_can_before_any_forward_pass(small, kwargs, message):
    model, tok, prompts = small
    kwargs = {"outcome": cp.metrics.logit("w3"), **kwargs}
    counter = ForwardCounter(model)
    try:
        with pytest.raises(InputError, match=message):
            cp.mediate(model, prompts, [cp.MLP(0), cp.MLP(1)], K=10, n_boot=0, tokenizer=tok, progress=False,
                       **kwargs)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_mediate_with_enough_prompts_still_runs(small):
    model, tok, prompts = small
    res = cp.mediate(model, prompts, [cp.MLP(0), cp.MLP(1)], cp.metrics.logit("w3"), query=np.random.default_rng(1)
                     .normal(size=(60, 8)), confounder=np.arange(60) % 3, K=10, n_boot=0, d_q=3, d_n=3,
                     tokenizer=tok, progress=False)
    assert np.isfinite(res.value).all()


# ----------------------------------------------------------------------------- adversarial files


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data):
    path = cp.aie(*data, **AIE).save(tmp_path_factory.mktemp("saved") / "r.npz")
    return path, path.read_bytes()


@FAST
@given(cut=st.floats(0.0, 0.999))
def test_a_truncated_result_file_is_named(saved, tmp_path_factory, cut):
    path, full = saved
    bad = tmp_path_factory.mktemp("cut") / "cut.npz"
    bad.write_bytes(full[:int(len(full) * cut)])
    with pytest.raises(InputError, match=rf"{re.escape(str(bad))}.*(damaged|not a saved result)"):
        cp.AIEResult.load(bad)


@FAST
@given(offset=st.integers(0, 10**6), xor=st.integers(1, 255))
def test_a_flipped_byte_in_a_result_file_is_named_or_changes_nothing(saved, tmp_path_factory, offset, xor):
    path, full = saved
    raw = bytearray(full)
    raw[offset % len(raw)] ^= xor
    bad = tmp_path_factory.mktemp("flip") / "flip.npz"
    bad.write_bytes(bytes(raw))
    good = cp.AIEResult.load(path)
    try:
        loaded = cp.AIEResult.load(bad)
    except InputError as err:
        assert str(bad) in str(err)
    else:  # a byte the reader never uses (zip padding): the same result
        assert repr(loaded) == repr(good)


def test_a_text_file_named_npz_and_an_empty_file_are_named(tmp_path):
    text, empty = tmp_path / "text.npz", tmp_path / "empty.npz"
    text.write_text("hello")
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=rf"{re.escape(str(text))} is not a saved result: expected an .npz \(zip\) "
                                         r"archive; the file starts with b'hell'"):
        cp.AIEResult.load(text)
    with pytest.raises(InputError, match=r"empty.npz is not a saved result: .*\(it is empty\)"):
        cp.AIEResult.load(empty)


@FAST
@given(blob=st.binary(max_size=200))
def test_any_bytes_as_a_jsonl_file_load_or_are_named(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    path.write_bytes(blob)
    try:
        ps = cp.datasets.from_jsonl(path)
    except InputError as err:
        assert str(err).startswith(str(path))
    else:
        assert len(ps) >= 1 and all(isinstance(p, str) and p.strip() for p in ps.prompts)

