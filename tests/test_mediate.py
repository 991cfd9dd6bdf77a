"""mediate(): the model-level pipeline composes collect, topics and aie_many correctly, in memory and from a
store (captured by ``cp.mediate(..., store=DIR)`` from a tiny random GPT-2)."""

import nnsight
import numpy as np
import pytest

import confounded_patching as cp
import tiny
from confounded_patching.activations.store import ActivationStore
from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.confounders import kmeans_topics
from confounded_patching.estimation.partners import pair_index
from simulations import quiet
from stores import synthetic  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def setup():
    model = nnsight.TransformersModel(tiny.hf_model("gpt2"), tokenizer=tiny.tokenizer())
    prompts = tiny.prompts(220, seed=7)
    nodes = cp.nodes(model, kinds=("mlp", "head"))
    return model, prompts, nodes


def test_mediate_equals_its_parts(setup):
    model, prompts, nodes = setup
    metric = cp.metrics.logit_diff("w3", "w4")
    kw = dict(K=30, n_boot=10, d_q=8, d_n=8, seed=1)  # automatic gamma: finite adjusted values to compare
    res = quiet(cp.mediate, model, prompts, nodes, metric, n_topics=3, query="model", embed_layer=0, progress=False,
                **kw)
    acts = cp.collect(model, prompts, nodes, metric=metric, embed_layer=0, progress=False)
    topics = kmeans_topics(acts.embedding, k=3, seed=1)
    pairs = pair_index(len(prompts), 30, 1)
    vals = [acts[n] for n in nodes]
    adj = aie_many(acts.embedding, vals, acts.outcome, topics, pairs=pairs, **{k: v for k, v in kw.items()})
    unadj = aie_many(acts.embedding, vals, acts.outcome, None, pairs=pairs, **{k: v for k, v in kw.items()})
    above = np.array([n.layer >= 1 for n in nodes])  # layer-0 nodes feed the query: no estimate for them
    np.testing.assert_allclose(res.adjusted.value[above], adj.value[above], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(res.unadjusted.value[above], unadj.value[above], rtol=1e-6, equal_nan=True)
    assert np.isfinite(res.adjusted.value[above]).sum() >= above.sum() // 2  # not NaN against NaN
    assert list(res.topics) == [str(t) for t in topics]
    df = res.to_dataframe()
    assert set(df["method"]) == {"eb:adjusted", "eb:unadjusted"} and len(df) == 2 * len(nodes)
    assert {"node", "kind", "layer", "head", "pos", "value", "ci_low", "ci_high", "ess", "gamma", "reliable",
            "reason"} <= set(df.columns)
    assert df["reliable"].dtype == bool


def test_the_models_query_never_comes_from_a_layer_at_or_above_the_nodes(setup):
    model, prompts, nodes = setup
    with pytest.warns(UserWarning, match=r"nodes lie at or below the query's layer"):
        res = cp.mediate(model, prompts, nodes, cp.metrics.logit_diff("w3", "w4"), query="model", embed_layer=1,
                         K=20, n_boot=0, d_q=6, d_n=6, progress=False)
    assert res.settings["embed_layer"] == 1
    for table in (res.adjusted, res.unadjusted):
        for i, node in enumerate(nodes):  # the tiny model has layers 0 and 1: every node is at or below layer 1
            assert node.layer <= 1
            assert np.isnan(table.value[i]) and table.status[i] == "unidentified" and not table.reliable[i]
            assert "computed from this node's output" in table.reason[i]
    assert not res.reliable.any() and all("embed_layer" in r for r in res.reason)


def test_sentence_query_is_the_encoders_embedding_of_the_prompts(setup):
    from confounded_patching.models.encoder import embed_sentences

    model, prompts, nodes = setup
    metric = cp.metrics.logit_diff("w3", "w4")
    kw = dict(K=20, n_boot=0, d_q=6, d_n=6, seed=2)
    res = quiet(cp.mediate, model, prompts, nodes[:4], metric, confounder=None, progress=False, **kw)
    acts = cp.collect(model, prompts, nodes[:4], metric=metric, progress=False)
    q = embed_sentences(prompts)
    ref = quiet(aie_many, q, [acts[n] for n in nodes[:4]], acts.outcome, None, pairs=pair_index(len(prompts), 20, 2),
                **kw)
    assert res.query.startswith("sentence embedding (all-MiniLM-L6-v2")
    np.testing.assert_allclose(res.unadjusted.value, ref.value, rtol=1e-6, equal_nan=True)


def test_mediate_with_labels_and_reused_activations(setup, tmp_path):
    model, prompts, nodes = setup
    acts = cp.collect(model, prompts, nodes, embed_layer=1, progress=False)
    rng = np.random.default_rng(0)
    labels = (rng.random(len(prompts)) < 0.3).astype(float)
    topics = np.array(["a", "b"] * (len(prompts) // 2))
    res = cp.mediate(model, prompts, nodes, labels, confounder=topics, activations=acts, K=20, n_boot=0, d_q=6,
                     d_n=6, gamma=0.2, gamma_x=0.1, progress=False)
    assert res.outcome_name == "labels" and np.array_equal(res.outcome, labels)
    back = cp.MediationResult.load(res.save(tmp_path / "med"))
    np.testing.assert_array_equal(back.adjusted.value, res.adjusted.value)
    assert back.nodes == nodes and back.adjusted.status == res.adjusted.status


def test_mediate_bad_input(setup):
    model, prompts, nodes = setup
    with pytest.raises(cp.InputError, match="outcome is required"):
        cp.mediate(model, prompts, nodes)
    with pytest.raises(cp.InputError, match=r"outcome as labels must have one value per prompt \(220\)"):
        cp.mediate(model, prompts, nodes, np.zeros(5), progress=False)
    with pytest.raises(cp.InputError, match="confounder must be 'kmeans'"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), confounder="topics", progress=False)
    labels = ["yes", "no"] * 110
    with pytest.raises(cp.InputError, match=r"outcome as labels must be numbers, one per prompt .* holding 'yes'"):
        cp.mediate(model, prompts, nodes, labels, query="model", embed_layer=0, progress=False)
    with pytest.raises(cp.InputError, match=r"mediate got unknown keyword argument\(s\) \['d_qq'\]; it takes the "
                                            r"estimator's settings .*'d_q'"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), d_qq=3, progress=False)
    with pytest.raises(cp.InputError, match=r"seed must be an int >= 0; received '0'"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), seed="0", progress=False)
    with pytest.raises(cp.InputError, match=r"query must be one of \('sentence', 'model'\) or an array"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), query="residual", progress=False)
    with pytest.raises(cp.InputError, match=r"query is constant .* k-means topics cannot be formed"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), query=np.zeros((220, 8)), progress=False)


def test_a_constant_query_gives_every_node_nan_and_the_reason(setup):
    model, prompts, nodes = setup
    topics = np.array(["a", "b"] * 110)
    with pytest.warns(UserWarning, match="not identified by the data"):
        res = cp.mediate(model, prompts, nodes[:3], cp.metrics.logit("w3"), query=np.zeros((220, 8)),
                         confounder=topics, K=20, n_boot=5, d_q=4, d_n=4, progress=False)
    for table in (res.adjusted, res.unadjusted):
        assert np.isnan(table.value).all() and np.isnan(table.ci_low).all()
        assert set(table.status) == {"unidentified"} and not table.reliable.any()
        assert all(r == "the query is constant: no variation to reweight" for r in table.reason)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error raised without a GPU")
def test_mediate_asking_for_cuda_without_a_gpu_fails_before_the_capture(setup):
    model, prompts, nodes = setup
    with pytest.raises(cp.InputError, match=r"device='cuda' asks for a CUDA GPU"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), device="cuda", progress=False)


def test_a_missing_sentence_encoder_is_said_before_the_capture(setup, monkeypatch):
    from confounded_patching.errors import ModelFileNotFound
    from confounded_patching.estimation import mediate as mediate_module
    from confounded_patching.models import encoder

    def missing():
        raise ModelFileNotFound("the sentence encoder all-MiniLM-L6-v2 is not installed")

    def no_capture(*args, **kwargs):
        raise AssertionError("the capture ran before the encoder was checked")

    monkeypatch.setattr(encoder, "minilm_zip", missing)
    monkeypatch.setattr(mediate_module, "collect", no_capture)
    model, prompts, nodes = setup
    with pytest.raises(ModelFileNotFound, match="not installed"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), progress=False)


def test_degenerate_weights_warn_and_healthy_ones_do_not():
    import warnings
    from types import SimpleNamespace

    from confounded_patching.estimation.mediate import warn_if_degenerate

    bad = SimpleNamespace(value=np.zeros(4), status=["infeasible"] * 3 + ["converged"], pair_ess=np.full(4, 0.2),
                          ess_x=np.nan, n=100)
    with pytest.warns(UserWarning, match="3 of 4 nodes have infeasible balance"):
        warn_if_degenerate("adjusted", bad)
    thin = SimpleNamespace(value=np.zeros(4), status=["converged"] * 4, pair_ess=np.array([1e-5, 1e-5, 1e-4, 0.5]),
                           ess_x=np.nan, n=100)
    with pytest.warns(UserWarning, match="3 have pair-weight ESS"):
        warn_if_degenerate("unadjusted", thin)
    separated = SimpleNamespace(value=np.zeros(4), status=["converged"] * 4, pair_ess=np.full(4, 1e-5),
                                ess_x=158.2, n=1000)
    with pytest.warns(UserWarning, match="topic model keeps an effective sample size of 158 of 1000 prompts"):
        warn_if_degenerate("adjusted", separated)
    ok = SimpleNamespace(value=np.zeros(4), status=["converged"] * 3 + ["infeasible"], pair_ess=np.full(4, 0.01),
                         ess_x=100.0, n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_degenerate("adjusted", ok)


@pytest.fixture(scope="module")
def gpt2():
    model = nnsight.TransformersModel(tiny.hf_model("gpt2"), tokenizer=tiny.tokenizer())
    nodes = cp.nodes(model, kinds=("mlp", "head", "resid"), positions=(-1,))
    return model, tiny.prompts(220, seed=7), nodes


MED = dict(K=30, n_boot=10, d_q=8, d_n=8, seed=1, n_topics=3, query="model", embed_layer=0, chunk_size=5,
           progress=False)


@pytest.fixture(scope="module")
def in_memory(gpt2):
    model, prompts, nodes = gpt2
    return quiet(cp.mediate, model, prompts, nodes, cp.metrics.logit_diff("w3", "w4"), **MED)


def _same(a, b):
    for name in ("adjusted", "unadjusted"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.status == tb.status and ta.status_x == tb.status_x
        # measured: equal to ~1e-16; the margin covers a float32 rounding flip in the solver (aie_many's default)
        np.testing.assert_allclose(tb.value, ta.value, rtol=1e-6, atol=1e-8, equal_nan=True)
    above = np.array([n.layer >= 1 for n in a.nodes])  # layer-0 nodes feed the query (embed_layer=0)
    assert np.isfinite(a.adjusted.value[above]).all() and np.isnan(a.adjusted.value[~above]).all()
    np.testing.assert_array_equal(a.outcome, b.outcome)
    assert list(a.topics) == list(b.topics)


def test_mediate_with_a_store_equals_in_memory_and_reopens_without_the_model(gpt2, in_memory, tmp_path):
    model, prompts, nodes = gpt2
    metric = cp.metrics.logit_diff("w3", "w4")
    captured = quiet(cp.mediate, model, prompts, nodes, metric, store=tmp_path, **MED)  # same batches as in memory
    _same(in_memory, captured)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 7
    reopened = quiet(cp.mediate, None, None, None, metric, store=tmp_path, **MED)
    _same(in_memory, reopened)
    assert reopened.nodes == nodes
    as_object = quiet(cp.mediate, None, None, nodes, metric, activations=ActivationStore.open(tmp_path), **MED)
    _same(in_memory, as_object)


def test_mediate_resumes_an_interrupted_capture_in_its_store(gpt2, in_memory, tmp_path):
    model, prompts, nodes = gpt2
    metric = cp.metrics.logit_diff("w3", "w4")
    quiet(cp.collect, model, prompts, nodes, metric=metric, embed_layer=0, store=tmp_path, progress=False)
    shards = sorted(tmp_path.glob("shard-*.safetensors"))
    for shard in shards[2:5]:  # as if the capture had stopped before these
        shard.unlink()
    with pytest.raises(cp.InputError, match=r"incomplete: 4 of 7 shards are written; run collect"):
        cp.mediate(None, None, nodes, metric, store=tmp_path, **MED)
    resumed = quiet(cp.mediate, model, prompts, nodes, metric, store=tmp_path, **MED)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 7
    _same(in_memory, resumed)


def test_a_capture_is_not_resumed_with_another_metric(gpt2, tmp_path):
    model, prompts, nodes = gpt2
    cp.collect(model, prompts[:40], nodes, metric=cp.metrics.logit_diff("w3", "w4"), store=tmp_path, progress=False)
    with pytest.raises(cp.InputError, match=r"collected with metric=.*this call has metric="):
        cp.collect(model, prompts[:40], nodes, metric=cp.metrics.logit("w3"), store=tmp_path, progress=False)


def test_store_input_errors_name_what_was_expected(synthetic, gpt2, tmp_path):
    acts, q, y, topics, store = synthetic
    with pytest.raises(cp.InputError, match=r"one row per prompt \(200, the length of outcome\); received an "
                                            r"activation store of 240 prompts"):
        aie_many(q[:200], store, y[:200], None)
    with pytest.raises(cp.InputError, match=r"does not hold 1 of the 2 nodes, e.g. MLP\(7, pos=-1\)"):
        store.select([cp.MLP(0), cp.MLP(7)])
    with pytest.raises(cp.InputError, match="non-empty list of stored nodes"):
        store.select([])
    with pytest.raises(cp.InputError, match="not an activation store"):
        cp.mediate(None, None, None, cp.metrics.logit("w3"), store=tmp_path / "nothing")
    with pytest.raises(cp.InputError, match="either activations=... or store=DIR, not both"):
        cp.mediate(None, None, None, cp.metrics.logit("w3"), store=tmp_path, activations=store)
    with pytest.raises(cp.InputError, match=r"store must be a directory path .*; received 3"):
        cp.mediate(gpt2[0], gpt2[1], gpt2[2], cp.metrics.logit("w3"), store=3)
    with pytest.raises(cp.InputError, match=r"activations must be an Activations .* or an ActivationStore"):
        cp.mediate(None, None, None, cp.metrics.logit("w3"), activations={"a": 1})
    with pytest.raises(cp.InputError, match=r"d_n must be a positive int; received 0"):
        aie_many(q, store, y, topics, d_n=0)
