"""An on-disk activation store for runs larger than memory.

Layout of a store directory::

    manifest.json          nodes, prompt fingerprint, batching, model sizes, progress,
                           model and tokenizer fingerprints
    shard-00000.safetensors  one batch: a tensor per node (keyed by node label),
    shard-00001.safetensors  the prompt indices of the batch, lengths, outcome...,
                             and in its header the SHA-256 of each tensor

Each shard is written to a temporary name and renamed when complete, so a
shard that exists is whole and carries its checksums (:mod:`~.shards`).
``collect(..., store=DIR)`` skips the shards already present: an
interrupted run resumes where it stopped (with the same model and
tokenizer, prompts, nodes, batching, metric and embedding layer; anything
else is refused, :mod:`~.fingerprint`). A resume first checks
every shard already written against its checksums and recomputes the
damaged ones (with a warning naming them), and removes the temporary files
a killed write left behind. Reads verify the tensors they read and raise
:class:`~.errors.StoreCorruptError` naming a damaged shard. Nothing is
pickled; reading a store executes no code.

Format 1 stores (written before fingerprints and checksums) open for
reading, unverified and with a warning; resuming one is refused, since
nothing says which model wrote its shards.

A store is read without loading it whole: ``store.select(nodes)`` is a view
of some nodes, ``iter_chunks`` reads only the named nodes' tensors from each
shard (safetensors reads single keys), and ``outcome``, ``embedding`` and
``lengths`` read only those per-prompt columns. ``cp.mediate(..., store=DIR)``
and ``aie_many(query, store, ...)`` work this way, a chunk of nodes at a time
(:mod:`~confounded_patching.estimation.node_coords`).

Example::

    >>> store = collect(model, prompts, nodes, metric=metric, embed_layer=7, store="/data/run1")
    >>> store = ActivationStore.open("/data/run1")          # later, in another process
    >>> len(store), store.outcome.shape, store.widths()[:2]
    (1000, torch.Size([1000]), [576, 64])
    >>> sub = store.select(store.nodes[:10])                # a view: nothing is read
    >>> acts = sub.load()                                   # in memory, 10 nodes
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError, StoreCorruptError, describe
from ..nodes import Node, is_node, node_from_dict
from ..progress import progress_bar
from ..results import atomic_write
from .captured import Activations
from .fingerprint import identity_mismatch
from .shards import Checksums, clean_stale, verify_file, write_shard

__all__ = ["ActivationStore"]

_FORMAT = "confounded_patching.store/2"
_FORMAT_1 = "confounded_patching.store/1"  # no model fingerprint, no checksums: read-only
# capture settings a resumed run must share with the shards already written
_RESUME_KEYS = ("family", "n_layers", "d_model", "padding_side", "embed_layer", "metric")


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
    """A directory of activation shards. Read it whole (:meth:`load`) or chunk by chunk (:meth:`iter_chunks`).

    Attributes:
        path: the store directory.
        manifest: its ``manifest.json``.
        selected: the nodes this object reads (a view made by :meth:`select`);
            ``None`` for every stored node.
        verify: check every tensor read against its shard's checksum (once
            per tensor and store object); the file's size and header are
            checked on every open either way.
    """

    path: Path
    manifest: dict = field(repr=False)
    selected: list | None = field(default=None, repr=False)
    verify: bool = field(default=True, repr=False)

    @property
    def nodes(self) -> list[Node]:
        """The nodes this object reads (all stored nodes unless :meth:`select` made a view)."""
        if self.selected is not None:
            return list(self.selected)
        return self.stored_nodes

    @property
    def stored_nodes(self) -> list[Node]:
        return [node_from_dict(d) for d in self.manifest["nodes"]]

    @property
    def n_prompts(self) -> int:
        return int(self.manifest["n_prompts"])

    @property
    def n_shards(self) -> int:
        return int(self.manifest["n_shards"])

    @property
    def meta(self) -> dict:
        """Model sizes and collection settings (as :attr:`Activations.meta <.activations.Activations.meta>`)."""
        return self.manifest.get("meta", {})

    @property
    def prompts(self) -> list | None:
        return self.manifest.get("prompts")

    def __len__(self) -> int:
        return self.n_prompts

    def __contains__(self, node) -> bool:
        if "_stored_set" not in self.__dict__:
            self.__dict__["_stored_set"] = frozenset(self.stored_nodes)
        return is_node(node) and node in self.__dict__["_stored_set"]

    @property
    def shards_done(self) -> int:
        return sum(self._shard(i).exists() for i in range(self.n_shards))

    def check_complete(self, argument: str = "store") -> None:
        """Raise :class:`InputError` naming the missing shards unless every shard is written."""
        done = self.shards_done
        if done < self.n_shards:
            raise InputError(f"{argument} at {self.path} is incomplete: {done} of {self.n_shards} shards are written; "
                             "run collect(..., store=DIR) (or mediate with the model and store=DIR) again to resume")

    def select(self, nodes: Sequence[Node]) -> "ActivationStore":
        """A view of the store that reads only ``nodes`` (in this order); nothing is read now."""
        if isinstance(nodes, (str, bytes)) or is_node(nodes) or not isinstance(nodes, Sequence) or not len(nodes):
            raise InputError(f"nodes must be a non-empty list of stored nodes; received {describe(nodes)}")
        nodes = list(nodes)
        missing = [n for n in nodes if n not in self]
        if missing:
            raise InputError(f"the store at {self.path} does not hold {len(missing)} of the {len(nodes)} nodes, "
                             f"e.g. {missing[0]!r}; it holds {len(self.manifest['nodes'])} nodes, e.g. "
                             f"{self.stored_nodes[0]!r}")
        view = ActivationStore(self.path, self.manifest, nodes, self.verify)
        view.__dict__["_checks"] = self._checks  # the views share what was verified
        return view

    def widths(self, nodes: Sequence[Node] | None = None) -> list[int]:
        """Each node's activation width ``d`` (read from the first shard's header; no tensor is loaded)."""
        nodes = self.nodes if nodes is None else list(nodes)
        with self._open_shard(0) as f:
            return [int(f.get_slice(n.label).get_shape()[-1]) for n in nodes]

    @property
    def outcome(self) -> torch.Tensor | None:
        """The metric per prompt ``[n_prompts]`` in prompt order, or None (read from the shards now)."""
        return self.read_column("outcome")

    @property
    def embedding(self) -> torch.Tensor | None:
        """The query embedding per prompt ``[n_prompts, d_model]``, or None (read from the shards now)."""
        return self.read_column("embedding")

    @property
    def lengths(self) -> torch.Tensor | None:
        return self.read_column("lengths")

    def read_column(self, name: str) -> torch.Tensor | None:
        """A per-prompt extra (``outcome``, ``embedding``, ``lengths``) in prompt order; None if not stored."""
        key = f"__{name}__"
        parts, order = [], []
        for i in range(self.n_shards):
            with self._open_shard(i) as f:
                if key not in f.keys():
                    return None
                order.append(f.get_tensor("__index__"))
                parts.append(f.get_tensor(key))
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    @property
    def complete(self) -> bool:
        return all(self._shard(i).exists() for i in range(self.manifest["n_shards"]))

    def _shard(self, i: int) -> Path:
        return self.path / f"shard-{i:05d}.safetensors"

    @property
    def _checks(self) -> Checksums:
        if "_checks" not in self.__dict__:
            self.__dict__["_checks"] = Checksums(required=self.manifest.get("format") != _FORMAT_1)
        return self.__dict__["_checks"]

    def _open_shard(self, i: int, *, defer: bool = False):
        """Shard ``i`` opened for reading, its checksums read (and its tensors verified as read, if ``verify``).

        ``defer``: hash in worker threads instead; ``self._checks.wait()`` collects the verdicts.
        """
        return self._checks.open(self._shard(i), verify=self.verify, defer=defer)

    def _damaged_shards(self) -> dict[int, str]:
        """``{i: why}`` for the written shards that fail their checksums (every byte read; in parallel)."""
        from concurrent.futures import ThreadPoolExecutor

        written = [i for i in range(self.n_shards) if self._shard(i).exists()]
        if not written or not self._checks.required:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            reasons = list(pool.map(lambda i: verify_file(self._shard(i)), written))
        return {i: why for i, why in zip(written, reasons) if why is not None}

    def verify_shards(self) -> None:
        """Read every written shard whole and check it against its checksums.

        Raises :class:`~.errors.StoreCorruptError` naming every damaged
        shard. Missing shards are not checked (see :meth:`check_complete`).
        """
        if not self._checks.required:
            raise InputError(f"the store at {self.path} has format 1, which records no checksums to verify")
        damaged = self._damaged_shards()
        if damaged:
            names = [self._shard(i).name for i in damaged]
            detail = "; ".join(f"{self._shard(i).name}: {why}" for i, why in list(damaged.items())[:5])
            raise StoreCorruptError(f"the store at {self.path} has {len(damaged)} damaged shard(s): {detail}"
                                    f"{'; ...' if len(damaged) > 5 else ''}. Run collect(..., store=DIR) again "
                                    "with the same model to recompute them", shards=names)

    @classmethod
    def open(cls, path, *, verify: bool = True) -> "ActivationStore":
        """Open an existing store directory (``verify``: see the class attributes)."""
        path = _store_path(path, "path")
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise InputError(f"{path} is not an activation store (no manifest.json)")
        manifest = _read_manifest(manifest_path)
        if manifest.get("format") == _FORMAT_1:
            warnings.warn(f"the store at {path} has format 1, which records no shard checksums: its shards are "
                          "read unverified", stacklevel=2)
        return cls(path, manifest, verify=verify)

    @classmethod
    def build(cls, path, nodes, id_lists, groups, run_batch, *, meta, prompts, progress,
              identity=None) -> "ActivationStore":
        """Create or resume a store, computing the missing or damaged shards with ``run_batch(index)``.

        ``identity`` (:func:`~.fingerprint.identity`) fingerprints the model
        and tokenizer; a store recorded with another one is refused.
        """
        path = _store_path(path, "store")
        path.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(id_lists, nodes, groups)
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            old = _read_manifest(manifest_path)
            _check_resumable(path, old, identity)
            if old.get("fingerprint") != fingerprint:
                raise InputError(
                    f"{path} holds a store for other prompts, nodes or batching; use a new directory or delete it"
                )
            old_meta = old.get("meta", {})
            for key in _RESUME_KEYS:
                if key in old_meta and old_meta.get(key) != meta.get(key):
                    raise InputError(f"{path} was collected with {key}={old_meta.get(key)!r}; this call has "
                                     f"{key}={meta.get(key)!r}. Use a new directory or delete it")
        else:
            _check_no_orphan_shards(path)
        _warn_stale(path, clean_stale(path))
        manifest = {"format": _FORMAT, "fingerprint": fingerprint, "nodes": [n.to_dict() for n in nodes],
                    "n_prompts": len(id_lists), "n_shards": len(groups), "meta": meta, "prompts": prompts,
                    "identity": identity}
        atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
        store = cls(path, manifest)
        damaged = store._damaged_shards()
        _warn_damaged(store, damaged)
        todo = [i for i in range(len(groups)) if not store._shard(i).exists() or i in damaged]
        for i in progress_bar(todo, progress, desc="collect", unit="batch", initial=len(groups) - len(todo),
                              total=len(groups)):
            result, extra = run_batch(groups[i])
            tensors = {n.label: result[n].contiguous() for n in nodes}
            tensors["__index__"] = torch.as_tensor(np.asarray(groups[i]), dtype=torch.int64)
            tensors.update({f"__{k}__": v.contiguous() for k, v in extra.items()})
            write_shard(store._shard(i), tensors)
        return store

    def iter_chunks(self, nodes: Sequence[Node] | None = None) -> Iterator[tuple[torch.Tensor, dict]]:
        """Yield ``(prompt_index [b], {node: [b, d]})`` shard by shard; memory is one shard."""
        nodes = self.nodes if nodes is None else list(nodes)
        for i in range(self.manifest["n_shards"]):
            with self._open_shard(i) as f:
                yield f.get_tensor("__index__"), {n: f.get_tensor(n.label) for n in nodes}

    def load(self, nodes: Sequence[Node] | None = None):
        """The store (or some of its nodes) as an in-memory :class:`~.captured.Activations`."""
        nodes = self.nodes if nodes is None else list(nodes)
        parts, extras, order = [], {}, []
        for i in range(self.manifest["n_shards"]):
            with self._open_shard(i, defer=True) as f:
                order.append(f.get_tensor("__index__"))
                parts.append([f.get_tensor(n.label) for n in nodes])
                for key in f.keys():
                    if key.startswith("__") and key != "__index__":
                        extras.setdefault(key.strip("_"), []).append(f.get_tensor(key))
        self._checks.wait()
        inverse = torch.argsort(torch.cat(order))
        values = [torch.cat([p[j] for p in parts])[inverse] for j in range(len(nodes))]
        extra = {k: torch.cat(v)[inverse] for k, v in extras.items()}
        return Activations(nodes=nodes, values=values, prompts=self.manifest.get("prompts"),
                           lengths=extra.get("lengths"), outcome=extra.get("outcome"),
                           embedding=extra.get("embedding"), meta=self.manifest.get("meta", {}))


# ----------------------------------------------------------------------------- integrity checks


def _store_path(path, argument: str) -> Path:
    """``path`` as a Path; refuses non-paths and existing regular files."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InputError(f"{argument} must be a directory path (str or os.PathLike); received {describe(path)}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{argument} must be a directory for the activation store; {path} is an existing file")
    return path


def _read_manifest(manifest_path: Path) -> dict:
    """The parsed ``manifest.json``; :class:`InputError` naming the file if it is damaged or of another format."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{manifest_path} is damaged: not a readable JSON manifest ({err}). Collect into a new "
                         "directory, or delete this one") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path} is damaged: expected a JSON object; received {describe(manifest)}")
    if manifest.get("format") not in (_FORMAT, _FORMAT_1):
        raise InputError(f"{manifest_path}: unknown format {manifest.get('format')!r}; expected {_FORMAT!r}")
    wanted = {"nodes": list, "n_prompts": int, "n_shards": int}
    bad = [k for k, t in wanted.items() if not isinstance(manifest.get(k), t) or isinstance(manifest.get(k), bool)]
    if bad:
        raise InputError(f"{manifest_path} is damaged: field {bad[0]!r} is missing or of the wrong type "
                         f"(received {describe(manifest.get(bad[0]))})")
    return manifest


def _check_resumable(path: Path, old: dict, identity) -> None:
    """Refuse to resume a store of format 1, or one collected with another model or tokenizer."""
    if old.get("format") == _FORMAT_1:
        raise InputError(f"the store at {path} has format 1, which records neither the model that collected it "
                         "nor shard checksums, so a resume cannot check that its shards match this model. Read it "
                         "with ActivationStore.open(DIR) (or mediate(..., store=DIR) without a model), or collect "
                         "into a new directory")
    why = identity_mismatch(path, old.get("identity"), identity)
    if why is not None:
        raise InputError(why)


def _check_no_orphan_shards(path: Path) -> None:
    """Refuse a directory that holds shards but no manifest: nothing says what computed them."""
    orphans = sorted(p.name for p in path.glob("shard-*.safetensors"))
    if orphans:
        raise InputError(f"{path} holds {len(orphans)} shard(s) (e.g. {orphans[0]}) but no manifest.json, so "
                         "nothing says which model, prompts or nodes they belong to; collect into a new directory, "
                         "or delete this one")


def _warn_stale(path: Path, removed: int) -> None:
    if removed:
        warnings.warn(f"removed {removed} temporary file(s) that an interrupted write left in the store at {path}",
                      stacklevel=3)


def _warn_damaged(store: "ActivationStore", damaged: dict) -> None:
    if damaged:
        detail = "; ".join(f"{store._shard(i).name} ({why})" for i, why in list(damaged.items())[:5])
        warnings.warn(f"the store at {store.path} has {len(damaged)} damaged shard(s), recomputed now: {detail}"
                      f"{'; ...' if len(damaged) > 5 else ''}", stacklevel=3)
