"""The on-disk activation store: resuming a capture, views of some nodes, per-prompt columns in prompt order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import confounded_patching as cp
import tiny
from confounded_patching.activations.store import ActivationStore
from confounded_patching.estimation.aie import aie_many
from simulations import quiet
from stores import D_N, synthetic  # noqa: F401  (a fixture)


def test_store_resumes_after_interruption(tmp_path, monkeypatch):
    hf, tok = tiny.hf_model("qwen2"), tiny.tokenizer()
    nodes = cp.nodes(hf, positions=(-1,))
    prompts = tiny.prompts(7, seed=3)
    full = cp.collect(hf, prompts, nodes, tokenizer=tok, batch_size=2, progress=False)
    from confounded_patching.models.adapters import HFAdapter

    calls = {"n": 0}
    original = HFAdapter._forward

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFAdapter, "_forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        cp.collect(hf, prompts, nodes, tokenizer=tok, batch_size=2, store=tmp_path, progress=False)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 2
    assert not list(tmp_path.glob("*.tmp"))
    store = cp.collect(hf, prompts, nodes, tokenizer=tok, batch_size=2, store=tmp_path, progress=False)
    assert calls["n"] == 5  # 2 shards, the interrupted call, then the 2 missing shards
    assert store.complete
    loaded = store.load()
    for n in nodes:
        assert torch.equal(loaded[n], full[n])
    seen = torch.cat([idx for idx, _ in store.iter_chunks(nodes[:1])])
    assert sorted(seen.tolist()) == list(range(7))
    with pytest.raises(cp.InputError, match="other prompts"):
        cp.collect(hf, prompts[:3], nodes, tokenizer=tok, batch_size=2, store=tmp_path, progress=False)


def test_a_selected_view_reads_only_its_nodes_in_its_order(synthetic):
    acts, q, y, topics, store = synthetic
    pick = [cp.Head(0, 1), cp.MLP(0)]
    view = store.select(pick)
    assert view.nodes == pick and store.nodes != pick and view.widths() == [16, 120]
    kw = dict(K=20, n_boot=0, d_q=D_N, d_n=D_N, gamma=0.3, gamma_x=0.3, dtype=torch.float64)
    mem = quiet(aie_many, q, [acts[n] for n in pick], y, topics, **kw)
    disk = quiet(aie_many, q, view, y, topics, **kw)
    np.testing.assert_allclose(disk.value, mem.value, rtol=1e-6, atol=1e-9, equal_nan=True)


def test_store_columns_come_back_in_prompt_order(synthetic):
    acts, q, y, _, store = synthetic
    assert len(store) == len(y) and cp.MLP(0) in store and cp.MLP(9) not in store
    assert torch.equal(store.outcome, y) and torch.equal(store.embedding, q)
    assert store.meta["metric"] == "synthetic"
    assert cp.ActivationStore is ActivationStore and repr(store) == f"ActivationStore(path={store.path!r})"
    assert torch.equal(store.select([cp.Head(0, 0)]).load()[cp.Head(0, 0)], acts[cp.Head(0, 0)])
