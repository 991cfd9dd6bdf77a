"""Synthetic activation stores with known structure, written with ``ActivationStore.build``.

Controlled widths and spectra: PCA's randomized and exact branches, a node narrower than ``d_n``, a
constant node, a low-rank node, a large mean offset; shards in shuffled prompt order and of unequal size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import confounded_patching as cp
from confounded_patching.activations.store import ActivationStore


D_N = 8


def synthetic_activations(m: int = 240, seed: int = 0):
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


def write_store(path, acts, q, y, *, seed: int = 0, constant: bool = False):
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
    acts, q, y, topics = synthetic_activations()
    store = write_store(tmp_path_factory.mktemp("store"), acts, q, y)
    return acts, q, y, topics, store
