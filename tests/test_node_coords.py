"""Node coordinates streamed from an on-disk store equal those of the same activations in memory, and so does the
estimator that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import confounded_patching as cp
from confounded_patching.activations.store import ActivationStore
from confounded_patching.estimation.aie import aie_many
from confounded_patching.estimation.node_coords import StoreNodes, node_source
from simulations import quiet
from stores import D_N, synthetic, synthetic_activations, write_store  # noqa: F401  (a fixture)


def test_streamed_pca_equals_in_memory_pca_for_every_kind_of_node(tmp_path):
    acts, q, y, _ = synthetic_activations()
    store = write_store(tmp_path, acts, q, y, constant=True)
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
    quiet(aie_many, q, store, y, topics, K=20, n_boot=0, d_q=D_N, d_n=D_N, gamma=0.3, gamma_x=0.3, chunk_size=2)
    assert requested and max(requested) <= 2  # one chunk of nodes per pass
    assert read_widths and max(read_widths) <= 2 * D_N + 20  # only narrow nodes are read into [B, m, D]


@pytest.mark.parametrize("gamma", [0.3, "auto"])
def test_aie_many_from_a_store_equals_in_memory(synthetic, gamma):
    acts, q, y, topics, store = synthetic
    nodes = store.nodes
    kw = dict(K=30, n_boot=20, d_q=D_N, d_n=D_N, gamma=gamma, gamma_x="auto", seed=2, chunk_size=3,
              dtype=torch.float64, augment=True)  # augmented: the calibration alone amplifies rounding to ~1e-7
    mem = quiet(aie_many, q, [acts[n] for n in nodes], y, topics, **kw)
    disk = quiet(aie_many, q, store, y, topics, **kw)
    assert disk.status == mem.status
    assert np.isfinite(mem.value).sum() >= len(nodes) - 1
    np.testing.assert_allclose(disk.value, mem.value, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(disk.boot, mem.boot, rtol=1e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(disk.gamma, mem.gamma, rtol=1e-6)
    np.testing.assert_allclose(disk.ess, mem.ess, rtol=1e-6)


def test_non_finite_activations_in_a_store_name_the_node(tmp_path):
    acts, q, y, topics = synthetic_activations(m=120)
    acts[cp.MLP(1)][5, 3] = float("nan")
    store = write_store(tmp_path, acts, q, y)
    with pytest.raises(cp.InputError, match=r"NaN or inf for node\(s\) \['MLP1@-1'\]"):
        aie_many(q, store.select([cp.MLP(1)]), y, topics, d_q=4, d_n=4, n_boot=0)
