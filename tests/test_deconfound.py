"""mediate(): the model-level pipeline composes collect, topics and aie_many correctly."""

import nnsight
import numpy as np
import pytest

import confounded_patching as cp
import tiny
from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.confounders import kmeans_topics
from confounded_patching.estimation.partners import pair_index


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
    res = cp.mediate(model, prompts, nodes, metric, n_topics=3, embed_layer=1, progress=False, **kw)
    acts = cp.collect(model, prompts, nodes, metric=metric, embed_layer=1, progress=False)
    topics = kmeans_topics(acts.embedding, k=3, seed=1)
    pairs = pair_index(len(prompts), 30, 1)
    vals = [acts[n] for n in nodes]
    adj = aie_many(acts.embedding, vals, acts.outcome, topics, pairs=pairs, **{k: v for k, v in kw.items()})
    unadj = aie_many(acts.embedding, vals, acts.outcome, None, pairs=pairs, **{k: v for k, v in kw.items()})
    np.testing.assert_allclose(res.adjusted.value, adj.value, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(res.unadjusted.value, unadj.value, rtol=1e-6, equal_nan=True)
    assert np.isfinite(res.adjusted.value).sum() >= len(nodes) // 2  # the comparison is not NaN against NaN
    assert list(res.topics) == [str(t) for t in topics]
    df = res.to_dataframe()
    assert set(df["method"]) == {"eb:adjusted", "eb:unadjusted"} and len(df) == 2 * len(nodes)
    assert {"node", "kind", "layer", "head", "pos", "value", "ci_low", "ci_high", "ess", "gamma"} <= set(df.columns)


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


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error raised without a GPU")
def test_mediate_asking_for_cuda_without_a_gpu_fails_before_the_capture(setup):
    model, prompts, nodes = setup
    with pytest.raises(cp.InputError, match=r"device='cuda' asks for a CUDA GPU"):
        cp.mediate(model, prompts, nodes, cp.metrics.logit("w3"), device="cuda", progress=False)


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
