"""An on-disk activation store for runs larger than memory.

Layout of a store directory::

    manifest.json          nodes, prompt fingerprint, batching, model sizes, progress
    shard-00000.safetensors  one batch: a tensor per node (keyed by node label),
    shard-00001.safetensors  the prompt indices of the batch, lengths, outcome...

Each shard is written to a temporary name and renamed when complete, so a
shard that exists is whole. ``collect(..., store=DIR)`` skips the shards
already present: an interrupted run resumes where it stopped. Nothing is
pickled; reading a store executes no code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import InputError
from .nodes import Node, node_from_dict
from .results import atomic_write

__all__ = ["ActivationStore"]

_FORMAT = "confounded_patching.store/1"


def _fingerprint(id_lists, nodes, groups) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([n.to_dict() for n in nodes]).encode())
    for ids in id_lists:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    for g in groups:
        h.update(np.asarray(g, dtype=np.int64).tobytes())
        h.update(b"/")
    return h.hexdigest()


@dataclass
class ActivationStore:
    """A directory of activation shards. Read it whole (:meth:`load`) or chunk by chunk (:meth:`iter_chunks`)."""

    path: Path
    manifest: dict

    @property
    def nodes(self) -> list[Node]:
        return [node_from_dict(d) for d in self.manifest["nodes"]]

    @property
    def n_prompts(self) -> int:
        return int(self.manifest["n_prompts"])

    @property
    def complete(self) -> bool:
        return all(self._shard(i).exists() for i in range(self.manifest["n_shards"]))

    def _shard(self, i: int) -> Path:
        return self.path / f"shard-{i:05d}.safetensors"

    @classmethod
    def open(cls, path) -> "ActivationStore":
        """Open an existing store directory."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise InputError(f"{path} is not an activation store (no manifest.json)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _FORMAT:
            raise InputError(f"{manifest_path}: unknown format {manifest.get('format')!r}; expected {_FORMAT!r}")
        return cls(path, manifest)

    @classmethod
    def build(cls, path, nodes, id_lists, groups, run_batch, *, meta, prompts, progress) -> "ActivationStore":
        """Create or resume a store, computing the missing shards with ``run_batch(index)``."""
        from safetensors.torch import save_file

        from .progress import progress_bar

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(id_lists, nodes, groups)
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            old = cls.open(path).manifest
            if old.get("fingerprint") != fingerprint:
                raise InputError(
                    f"{path} holds a store for other prompts, nodes or batching; use a new directory or delete it"
                )
        manifest = {"format": _FORMAT, "fingerprint": fingerprint, "nodes": [n.to_dict() for n in nodes],
                    "n_prompts": len(id_lists), "n_shards": len(groups), "meta": meta, "prompts": prompts}
        atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
        store = cls(path, manifest)
        todo = [i for i in range(len(groups)) if not store._shard(i).exists()]
        for i in progress_bar(todo, progress, desc="collect", unit="batch", initial=len(groups) - len(todo),
                              total=len(groups)):
            result, extra = run_batch(groups[i])
            tensors = {n.label: result[n].contiguous() for n in nodes}
            tensors["__index__"] = torch.as_tensor(np.asarray(groups[i]), dtype=torch.int64)
            tensors.update({f"__{k}__": v.contiguous() for k, v in extra.items()})
            atomic_write(store._shard(i), lambda tmp: save_file(tensors, tmp))
        return store

    def iter_chunks(self, nodes: Sequence[Node] | None = None) -> Iterator[tuple[torch.Tensor, dict]]:
        """Yield ``(prompt_index [b], {node: [b, d]})`` shard by shard; memory is one shard."""
        from safetensors import safe_open

        nodes = self.nodes if nodes is None else list(nodes)
        for i in range(self.manifest["n_shards"]):
            shard = self._shard(i)
            if not shard.exists():
                raise InputError(f"{self.path} is incomplete: {shard.name} is missing; run collect again to resume")
            with safe_open(str(shard), framework="pt") as f:
                yield f.get_tensor("__index__"), {n: f.get_tensor(n.label) for n in nodes}

    def load(self, nodes: Sequence[Node] | None = None):
        """The store (or some of its nodes) as an in-memory :class:`~.activations.Activations`."""
        from safetensors import safe_open

        from .activations import Activations

        nodes = self.nodes if nodes is None else list(nodes)
        parts, extras, order = [], {}, []
        for i in range(self.manifest["n_shards"]):
            with safe_open(str(self._shard(i)), framework="pt") as f:
                order.append(f.get_tensor("__index__"))
                parts.append([f.get_tensor(n.label) for n in nodes])
                for key in f.keys():
                    if key.startswith("__") and key != "__index__":
                        extras.setdefault(key.strip("_"), []).append(f.get_tensor(key))
        inverse = torch.argsort(torch.cat(order))
        values = [torch.cat([p[j] for p in parts])[inverse] for j in range(len(nodes))]
        extra = {k: torch.cat(v)[inverse] for k, v in extras.items()}
        return Activations(nodes=nodes, values=values, prompts=self.manifest.get("prompts"),
                           lengths=extra.get("lengths"), outcome=extra.get("outcome"),
                           embedding=extra.get("embedding"), meta=self.manifest.get("meta", {}))
