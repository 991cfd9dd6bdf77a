"""What every result shares: the long-form table's columns and method tags, and saving without pickle.

Long form: ``to_dataframe()`` of every result gives one row per node (and
method), with the columns :data:`LONG_FORM_COLUMNS`; its ``method`` column
holds one of the tags :data:`METHOD_TAGS` (``"patch:exact"``,
``"eb:adjusted"`` ...). :mod:`~.plot` and :mod:`~.report` read these tables,
so the tags and columns are defined here, once.

Every result type is a frozen dataclass whose fields are numpy arrays, torch
tensors, JSON-able values (str, int, float, bool, None, lists and dicts of
those) or lists of nodes. ``save(path)`` writes one ``.npz`` file: arrays as
npz members, everything else as one JSON document in the member ``__meta__``.
``load(path)`` reads it back with ``allow_pickle=False``, so loading a file
never executes code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .nodes import is_node, node_from_dict

__all__ = ["Result", "atomic_write", "METHOD_TAGS", "PATCH_EXACT", "PATCH_ATTRIBUTION", "RESAMPLE",
           "RESAMPLE_STRATIFIED", "EB_UNADJUSTED", "EB_ADJUSTED", "patch_tag", "resample_tag", "is_score",
           "NODE_COLUMNS", "LONG_FORM_COLUMNS", "node_columns"]

# ----------------------------------------------------------------------------- long form

#: ``method`` tags of the long-form tables, one per estimator, in the order figures show them.
PATCH_EXACT = "patch:exact"
PATCH_ATTRIBUTION = "patch:attribution"
RESAMPLE = "resample"
RESAMPLE_STRATIFIED = "resample:stratified"
EB_UNADJUSTED = "eb:unadjusted"
EB_ADJUSTED = "eb:adjusted"
METHOD_TAGS = (PATCH_EXACT, PATCH_ATTRIBUTION, RESAMPLE, RESAMPLE_STRATIFIED, EB_UNADJUSTED, EB_ADJUSTED)

#: The node's columns, first in every long-form table.
NODE_COLUMNS = ("node", "kind", "layer", "head", "pos")
#: The columns every long-form table has (results add their own: ``se``, ``ess``, ``direction`` ...).
LONG_FORM_COLUMNS = NODE_COLUMNS + ("method", "value")


def patch_tag(method: str) -> str:
    """The tag of classic (``"exact"``) or attribution patching."""
    return f"patch:{method}"


def resample_tag(stratified: bool) -> str:
    """The tag of the resample AIE, with partners drawn within strata or not."""
    return RESAMPLE_STRATIFIED if stratified else RESAMPLE


def is_score(tag: str) -> bool:
    """Whether a method's values are normalized patching scores (else AIEs in units of the outcome)."""
    return tag.startswith("patch:")


def node_columns(node) -> dict:
    """The :data:`NODE_COLUMNS` of one node's row."""
    return {"node": node.label, "kind": node.kind, "layer": node.layer, "head": getattr(node, "head", None),
            "pos": node.pos}


# ----------------------------------------------------------------------------- save and load

_FORMAT = "confounded_patching.result/1"
_TYPES: dict[str, type] = {}


def _encode(value: Any, name: str, arrays: dict) -> Any:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            arrays[name] = value.detach().cpu().numpy()
            return {"__array__": name, "torch": True}
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise InputError(f"field {name!r} holds an object array, which cannot be saved without pickle")
        arrays[name] = value
        return {"__array__": name}
    if is_node(value):
        return {"__node__": value.to_dict()}
    if isinstance(value, Result) and dataclasses.is_dataclass(value):
        return {"__result__": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), f"{name}.{f.name}", arrays)
                           for f in dataclasses.fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{name}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"field {name!r}: only dicts with str keys can be saved")
        return {"__dict__": {k: _encode(v, f"{name}.{k}", arrays) for k, v in value.items()}}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise InputError(f"field {name!r} of type {type(value).__name__} cannot be saved")


def _decode(value: Any, arrays) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__array__" in value:
            arr = arrays[value["__array__"]]
            if value.get("torch"):
                import torch

                return torch.from_numpy(np.ascontiguousarray(arr))
            return arr
        if "__node__" in value:
            return node_from_dict(value["__node__"])
        if "__result__" in value:
            cls = _TYPES.get(value["__result__"])
            if cls is None:
                raise InputError(f"unknown nested result type {value['__result__']!r}")
            return cls(**{k: _decode(v, arrays) for k, v in value["fields"].items()})
        if "__dict__" in value:
            return {k: _decode(v, arrays) for k, v in value["__dict__"].items()}
    return value


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: no half-written files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary files
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class Result:
    """Mixin for frozen dataclass results: ``save``/``load`` as npz + JSON."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _TYPES[cls.__name__] = cls

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (``.npz`` is appended if missing). Returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "format": _FORMAT,
            "type": type(self).__name__,
            "fields": {f.name: _encode(getattr(self, f.name), f.name, arrays) for f in dataclasses.fields(self)},
        }
        payload = {f"a{i}": arr for i, arr in enumerate(arrays.values())}
        names = dict(zip(arrays, payload))
        meta["members"] = names
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **payload)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a result written by ``save``; never unpickles."""
        path = Path(path)
        if not path.exists() and path.with_name(path.name + ".npz").exists():
            path = path.with_name(path.name + ".npz")
        with np.load(path, allow_pickle=False) as data:
            if "__meta__" not in data:
                raise InputError(f"{path} is not a saved result (no __meta__ member)")
            meta = json.loads(bytes(data["__meta__"]).decode())
            if meta.get("format") != _FORMAT:
                raise InputError(f"{path}: unknown format {meta.get('format')!r}; expected {_FORMAT!r}")
            if meta["type"] != cls.__name__:
                raise InputError(f"{path} holds a {meta['type']}, not a {cls.__name__}")
            arrays = {name: data[member] for name, member in meta["members"].items()}
        fields = {k: _decode(v, arrays) for k, v in meta["fields"].items()}
        fields = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
        return cls(**fields)
