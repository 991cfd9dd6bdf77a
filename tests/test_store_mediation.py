"""The estimator read from an on-disk activation store equals the estimator on the same activations in memory.

Two kinds of store: synthetic ones written with ``ActivationStore.build``
(controlled widths and spectra: PCA's randomized and exact branches, a node
narrower than ``d_n``, a constant node, a low-rank node, a large mean
offset; shards in shuffled prompt order and of unequal size), and one
captured from a tiny random GPT-2 by ``cp.mediate(..., store=DIR)``.
"""

from __future__ import annotations

import warnings

import nnsight
import numpy as np
import pytest
import torch

import confounded_patching as cp
import tiny
from confounded_patching.activations.store import ActivationStore
from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.node_coords import StoreNodes, node_source

D_N = 8


def _synthetic(m: int = 240, seed: int = 0):
    """Activations with known structure, the query, topics and an outcome with a q x n interaction."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, 3, size=m)
    q = rng.normal(size=(m, 40)) + 0.8 * rng.normal(size=(3, 40))[topics]
    spectrum = np.geomspace(10.0, 0.01, 120)  # decaying, as real activations
    acts = {
        cp.MLP(0): np.tanh(q @ rng.normal(size=(40, 120)) / 6) + rng.normal(size=(m, 120)) * spectrum,
        cp.MLP(1): rng.normal(size=(m, 120)) * spectrum,
        cp.MLP(2): 1000.0 + rng.normal(size=(m, 120)) * spectrum * 1e-2,  # large mean offset
        cp.Resid(0): rng.normal(size=(m, 3)) @ rng.normal(size=(3, 120)),  # rank 3 < d_n
        cp.Head(0, 0): q[:, :16] + rng.normal(size=(m, 16)),  # 16 wide: the exact SVD branch
        cp.Head(0, 1): rng.normal(size=(m, 16)),
        cp.Resid(1): rng.normal(size=(m, 6)),  # narrower than d_n: no PCA
    }
    acts = {n: torch.from_numpy(a).float() for n, a in acts.items()}
    y = (q[:, :3] * acts[cp.MLP(0)].numpy()[:, :3]).sum(1) + rng.normal(size=m)
    return acts, torch.from_numpy(q).float(), torch.from_numpy(y).float(), topics


def _write(path, acts, q, y, *, seed: int = 0, constant: bool = False):
    acts = dict(acts)
    if constant:
        acts[cp.MLP(3)] = torch.full((len(y), 120), 0.37)
    nodes = list(acts)
    m = len(y)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, m), size=6, replace=False))
    groups = np.split(rng.permutation(m), cuts)  # shuffled prompts, unequal shards

    def run_batch(index):
        return ({n: acts[n][index] for n in nodes},
                {"outcome": y[index], "embedding": q[index], "lengths": torch.ones(len(index), dtype=torch.long)})

    meta = {"n_layers": 2, "embed_layer": 1, "metric": "synthetic"}
    return ActivationStore.build(path, nodes, [[i] for i in range(m)], groups, run_batch, meta=meta, prompts=None,
                                 progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    acts, q, y, topics = _synthetic()
    store = _write(tmp_path_factory.mktemp("store"), acts, q, y)
    return acts, q, y, topics, store


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- coordinates


def test_streamed_pca_equals_in_memory_pca_for_every_kind_of_node(tmp_path):
    acts, q, y, _ = _synthetic()
    store = _write(tmp_path, acts, q, y, constant=True)
    nodes = store.nodes
    mem = node_source([store.load()[n] for n in nodes], len(y))
    disk = node_source(store, len(y))
    assert isinstance(disk, StoreNodes) and disk.widths == mem.widths
    for i, node in enumerate(nodes):
        a, b = mem.coords([i], D_N, 3), disk.coords([i], D_N, 3)
        assert a.shape == b.shape == (1, len(y), min(D_N, mem.widths[i]))
        if node == cp.Resid(0):
            # rank 3: components 4..8 are float32 storage noise (singular values ~1e-7 of the top one), which
            # pca() standardizes to unit variance on both paths; their directions are nearly degenerate, so
            # the two paths agree there only to ~1e-7. The real components agree to float64 rounding.
            np.testing.assert_allclose(b[..., :3].numpy(), a[..., :3].numpy(), atol=1e-9)
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)
            continue
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-9, err_msg=str(node))
    # batched chunks of equal width give the same coordinates as one node at a time
    wide = [i for i, w in enumerate(disk.widths) if w == 120 and nodes[i] != cp.Resid(0)]
    np.testing.assert_allclose(disk.coords(wide, D_N, 3).numpy(), mem.coords(wide, D_N, 3).numpy(), atol=1e-9)


def test_streamed_pca_fixes_signs_like_pca(synthetic):
    _, _, y, _, store = synthetic
    coords = node_source(store.select([cp.MLP(0)]), len(y)).coords([0], D_N, 0)[0]
    raw = store.select([cp.MLP(0)]).load()[cp.MLP(0)].double()
    loadings = torch.linalg.lstsq(raw - raw.mean(0), coords).solution  # [D, d]: each component's loadings
    top = loadings.gather(0, loadings.abs().argmax(0, keepdim=True))
    assert bool((top > 0).all())


def test_wide_nodes_are_never_read_whole_and_the_store_is_never_loaded(synthetic, monkeypatch):
    acts, q, y, topics, store = synthetic
    requested, read_widths = [], []
    original_iter, original_read = ActivationStore.iter_chunks, StoreNodes.read

    def iter_chunks(self, nodes=None):
        requested.append(len(self.nodes if nodes is None else nodes))
        return original_iter(self, nodes)

    def read(self, nodes):
        out = original_read(self, nodes)
        read_widths.append(out.shape[-1])
        return out

    def load(self, nodes=None):
        raise AssertionError("the streamed path must not load the store")

    monkeypatch.setattr(ActivationStore, "iter_chunks", iter_chunks)
    monkeypatch.setattr(StoreNodes, "read", read)
    monkeypatch.setattr(ActivationStore, "load", load)
    _quiet(aie_many, q, store, y, topics, K=20, n_boot=0, d_q=D_N, d_n=D_N, gamma=0.3, gamma_x=0.3, chunk_size=2)
    assert requested and max(requested) <= 2  # one chunk of nodes per pass
    assert read_widths and max(read_widths) <= 2 * D_N + 20  # only narrow nodes are read into [B, m, D]


# ----------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("gamma", [0.3, "auto"])
def test_aie_many_from_a_store_equals_in_memory(synthetic, gamma):
    acts, q, y, topics, store = synthetic
    nodes = store.nodes
    kw = dict(K=30, n_boot=20, d_q=D_N, d_n=D_N, gamma=gamma, gamma_x="auto", seed=2, chunk_size=3,
              dtype=torch.float64)
    mem = _quiet(aie_many, q, [acts[n] for n in nodes], y, topics, **kw)
    disk = _quiet(aie_many, q, store, y, topics, **kw)
    assert disk.status == mem.status
    assert np.isfinite(mem.value).sum() >= len(nodes) - 1
    np.testing.assert_allclose(disk.value, mem.value, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(disk.boot, mem.boot, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(disk.gamma, mem.gamma, rtol=1e-6)
    np.testing.assert_allclose(disk.ess, mem.ess, rtol=1e-6)


def test_a_selected_view_reads_only_its_nodes_in_its_order(synthetic):
    acts, q, y, topics, store = synthetic
    pick = [cp.Head(0, 1), cp.MLP(0)]
    view = store.select(pick)
    assert view.nodes == pick and store.nodes != pick and view.widths() == [16, 120]
    kw = dict(K=20, n_boot=0, d_q=D_N, d_n=D_N, gamma=0.3, gamma_x=0.3, dtype=torch.float64)
    mem = _quiet(aie_many, q, [acts[n] for n in pick], y, topics, **kw)
    disk = _quiet(aie_many, q, view, y, topics, **kw)
    np.testing.assert_allclose(disk.value, mem.value, rtol=1e-6, atol=1e-9, equal_nan=True)


def test_store_columns_come_back_in_prompt_order(synthetic):
    acts, q, y, _, store = synthetic
    assert len(store) == len(y) and cp.MLP(0) in store and cp.MLP(9) not in store
    assert torch.equal(store.outcome, y) and torch.equal(store.embedding, q)
    assert store.meta["metric"] == "synthetic"
    assert cp.ActivationStore is ActivationStore and repr(store) == f"ActivationStore(path={store.path!r})"
    assert torch.equal(store.select([cp.Head(0, 0)]).load()[cp.Head(0, 0)], acts[cp.Head(0, 0)])


# ----------------------------------------------------------------------------- mediate on a model


@pytest.fixture(scope="module")
def gpt2():
    model = nnsight.TransformersModel(tiny.hf_model("gpt2"), tokenizer=tiny.tokenizer())
    nodes = cp.nodes(model, kinds=("mlp", "head", "resid"), positions=(-1,))
    return model, tiny.prompts(220, seed=7), nodes


MED = dict(K=30, n_boot=10, d_q=8, d_n=8, seed=1, n_topics=3, embed_layer=1, chunk_size=5, progress=False)


@pytest.fixture(scope="module")
def in_memory(gpt2):
    model, prompts, nodes = gpt2
    return _quiet(cp.mediate, model, prompts, nodes, cp.metrics.logit_diff("w3", "w4"), **MED)


def _same(a, b):
    for name in ("adjusted", "unadjusted"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.status == tb.status and ta.status_x == tb.status_x
        # measured: equal to ~1e-16; the margin covers a float32 rounding flip in the solver (aie_many's default)
        np.testing.assert_allclose(tb.value, ta.value, rtol=1e-6, atol=1e-8, equal_nan=True)
    assert np.isfinite(a.adjusted.value).all()
    np.testing.assert_array_equal(a.outcome, b.outcome)
    assert list(a.topics) == list(b.topics)


def test_mediate_with_a_store_equals_in_memory_and_reopens_without_the_model(gpt2, in_memory, tmp_path):
    model, prompts, nodes = gpt2
    metric = cp.metrics.logit_diff("w3", "w4")
    captured = _quiet(cp.mediate, model, prompts, nodes, metric, store=tmp_path, **MED)  # same batches as in memory
    _same(in_memory, captured)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 7
    reopened = _quiet(cp.mediate, None, None, None, metric, store=tmp_path, **MED)
    _same(in_memory, reopened)
    assert reopened.nodes == nodes
    as_object = _quiet(cp.mediate, None, None, nodes, metric, activations=ActivationStore.open(tmp_path), **MED)
    _same(in_memory, as_object)


def test_mediate_resumes_an_interrupted_capture_in_its_store(gpt2, in_memory, tmp_path):
    model, prompts, nodes = gpt2
    metric = cp.metrics.logit_diff("w3", "w4")
    _quiet(cp.collect, model, prompts, nodes, metric=metric, embed_layer=1, store=tmp_path, progress=False)
    shards = sorted(tmp_path.glob("shard-*.safetensors"))
    for shard in shards[2:5]:  # as if the capture had stopped before these
        shard.unlink()
    with pytest.raises(cp.InputError, match=r"incomplete: 4 of 7 shards are written; run collect"):
        cp.mediate(None, None, nodes, metric, store=tmp_path, **MED)
    resumed = _quiet(cp.mediate, model, prompts, nodes, metric, store=tmp_path, **MED)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 7
    _same(in_memory, resumed)


def test_a_capture_is_not_resumed_with_another_metric(gpt2, tmp_path):
    model, prompts, nodes = gpt2
    cp.collect(model, prompts[:40], nodes, metric=cp.metrics.logit_diff("w3", "w4"), store=tmp_path, progress=False)
    with pytest.raises(cp.InputError, match=r"collected with metric=.*this call has metric="):
        cp.collect(model, prompts[:40], nodes, metric=cp.metrics.logit("w3"), store=tmp_path, progress=False)


# ----------------------------------------------------------------------------- input errors


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


def test_non_finite_activations_in_a_store_name_the_node(tmp_path):
    acts, q, y, topics = _synthetic(m=120)
    acts[cp.MLP(1)][5, 3] = float("nan")
    store = _write(tmp_path, acts, q, y)
    with pytest.raises(cp.InputError, match=r"NaN or inf for node\(s\) \['MLP1@-1'\]"):
        aie_many(q, store.select([cp.MLP(1)]), y, topics, d_q=4, d_n=4, n_boot=0)
