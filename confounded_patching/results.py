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
``load(path)`` reads it back without unpickling (a member of object dtype is
refused), so loading a file never executes code.

``load`` trusts nothing in the file: ``__meta__`` records a SHA-256 of each
array (dtype, shape, bytes), and a file that is not a zip archive, is
truncated, fails a checksum, names members it lacks, lacks a field, or
whose arrays' shapes disagree with each other (each result type's
``_check``) raises :class:`~.errors.InputError` naming the file and what is
wrong. Files saved before the checksums were added load without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import tempfile
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, describe
from .nodes import is_node, node_from_dict

__all__ = ["Result", "atomic_write", "check_array", "check_nodes_field", "check_scalar", "METHOD_TAGS", "PATCH_EXACT", "PATCH_ATTRIBUTION", "PATCH_AUTO", "RESAMPLE",
           "RESAMPLE_STRATIFIED", "EB_UNADJUSTED", "EB_ADJUSTED", "RESAMPLE_METHODS", "patch_tag", "resample_tag",
           "is_exact_resample", "is_score",
           "NODE_COLUMNS", "LONG_FORM_COLUMNS", "node_columns"]

# ----------------------------------------------------------------------------- long form

#: ``method`` tags of the long-form tables, one per estimator, in the order figures show them.
PATCH_EXACT = "patch:exact"
PATCH_ATTRIBUTION = "patch:attribution"
PATCH_AUTO = "patch:auto"
RESAMPLE = "resample"
RESAMPLE_STRATIFIED = "resample:stratified"
EB_UNADJUSTED = "eb:unadjusted"
EB_ADJUSTED = "eb:adjusted"
#: The resample AIE computed with first-order terms for some nodes (``method="auto"``) or all of them
#: (``method="attribution"``); the tags without a suffix are the exact resample AIE.
RESAMPLE_METHODS = ("auto", "attribution")
METHOD_TAGS = (PATCH_EXACT, PATCH_ATTRIBUTION, PATCH_AUTO,
               *(f"resample{s}:{m}" for m in RESAMPLE_METHODS for s in (":stratified", "")),
               RESAMPLE_STRATIFIED, RESAMPLE, EB_UNADJUSTED, EB_ADJUSTED)

#: The node's columns, first in every long-form table.
NODE_COLUMNS = ("node", "kind", "layer", "head", "pos")
#: The columns every long-form table has (results add their own: ``se``, ``ess``, ``direction`` ...).
LONG_FORM_COLUMNS = NODE_COLUMNS + ("method", "value")


def patch_tag(method: str) -> str:
    """The tag of classic patching: ``"exact"``, ``"attribution"`` or ``"auto"`` (a mix, per node kind)."""
    return f"patch:{method}"


def resample_tag(stratified: bool, method: str = "exact") -> str:
    """The tag of the resample AIE: donors drawn within strata or not, computed exactly or not.

    ``"resample"``, ``"resample:stratified"`` (exact); ``"resample:auto"``, ``"resample:stratified:auto"``,
    ``"resample:attribution"`` ... (first-order terms for some or all nodes).
    """
    base = RESAMPLE_STRATIFIED if stratified else RESAMPLE
    return base if method == "exact" else f"{base}:{method}"


def is_exact_resample(tag: str) -> bool:
    """Whether a method tag is the exact resample AIE (the interventional truth)."""
    return tag in (RESAMPLE, RESAMPLE_STRATIFIED)


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
            if value["__array__"] not in arrays:
                raise InputError(f"a field refers to array {value['__array__']!r}, which the metadata's member "
                                 f"list lacks (it lists {sorted(arrays)[:5]})")
            arr = arrays[value["__array__"]]
            if value.get("torch"):
                import torch

                return torch.from_numpy(np.ascontiguousarray(arr))
            return arr
        if "__node__" in value:
            return node_from_dict(value["__node__"])
        if "__result__" in value:
            cls = _TYPES.get(value["__result__"]) if isinstance(value["__result__"], str) else None
            if cls is None:
                raise InputError(f"unknown nested result type {value['__result__']!r}")
            return _construct(cls, value.get("fields"), arrays)
        if "__dict__" in value:
            return {k: _decode(v, arrays) for k, v in value["__dict__"].items()}
    return value


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: no half-written files."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write to {path}: it is an existing directory; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _new_file_mode())  # mkstemp creates 0600; results are ordinary files
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

    def _check(self) -> None:
        """Raise :class:`InputError` if the fields disagree with each other; ``load`` runs it.

        Result types override it to check their arrays' shapes (e.g. ``raw``
        is ``[n_pairs, n_nodes]``) with :func:`check_array`.
        """

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (``.npz`` is appended if missing). Returns the path."""
        path = _path_argument(path, "save")
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if path.is_dir():
            raise InputError(f"save: path {path} is an existing directory; give a file name, e.g. "
                             f"{path / (type(self).__name__ + '.npz')}")
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "format": _FORMAT,
            "type": type(self).__name__,
            "fields": {f.name: _encode(getattr(self, f.name), f.name, arrays) for f in dataclasses.fields(self)},
        }
        payload = {f"a{i}": arr for i, arr in enumerate(arrays.values())}
        names = dict(zip(arrays, payload))
        meta["members"] = names
        meta["checksums"] = {member: array_digest(payload[member]) for member in names.values()}
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **payload)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a result written by ``save``; never unpickles.

        Raises :class:`InputError` naming the file if it is not a saved
        result, is damaged (checksums, truncation) or its fields disagree.
        """
        path = _path_argument(path, "load")
        if not path.exists() and path.with_name(path.name + ".npz").exists():
            path = path.with_name(path.name + ".npz")
        if path.is_dir():
            raise InputError(f"load: path {path} is a directory; expected a file saved by {cls.__name__}.save")
        meta, arrays = _read_npz(path, cls)
        try:
            return _construct(cls, meta["fields"], arrays)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- reading files safely

# what numpy and zipfile raise on a damaged archive
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            UnicodeDecodeError, NotImplementedError, struct.error, OverflowError, AttributeError, RuntimeError,
            SyntaxError, tokenize.TokenError)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _path_argument(path, function: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InputError(f"{function}: path must be a file path (str or os.PathLike); received {describe(path)}")
    return Path(path)


def _new_file_mode() -> int:
    """0o666 less the process umask (0o644 under umask 022): the mode ``open`` gives a new file."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def array_digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    h = hashlib.sha256(f"{arr.dtype.str}|{tuple(arr.shape)}|".encode())
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _read_npz(path: Path, cls) -> tuple[dict, dict]:
    """``(meta, {name: array})`` of a saved result, every array checked; :class:`InputError` naming the file.

    The archive is read with :mod:`zipfile` and each ``.npy`` member parsed
    here: object (pickled) dtypes are refused from the header alone, and
    an array's size is checked against the member's before it is read.
    """
    with open(path, "rb") as fh:  # opened here so that a failure leaves no file open
        magic = fh.read(4)
        if magic not in _ZIP_MAGIC:
            raise InputError(f"{path} is not a saved result: expected an .npz (zip) archive; the file starts with "
                             f"{magic!r}{' (it is empty)' if not magic else ''}")
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as archive:
                members = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
                meta = _read_meta(path, archive, members, cls)
                arrays = {name: _read_member(path, archive, member, meta.get("checksums"))
                          for name, member in meta["members"].items()}
        except InputError:
            raise
        except _DAMAGED as err:
            raise InputError(f"{path} is damaged or not a saved result: {type(err).__name__}: {err}") from None
    return meta, arrays


def _read_meta(path: Path, archive: zipfile.ZipFile, members: set, cls) -> dict:
    if "__meta__" not in members:
        raise InputError(f"{path} is not a saved result (no __meta__ member)")
    raw = _read_member(path, archive, "__meta__", None)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise InputError(f"{path}: member __meta__ must be a uint8 vector; received {describe(raw)}")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: member __meta__ is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: __meta__ must be a JSON object; received {describe(meta)}")
    if meta.get("format") != _FORMAT:
        raise InputError(f"{path}: unknown format {meta.get('format')!r}; expected {_FORMAT!r}")
    if meta.get("type") != cls.__name__:
        raise InputError(f"{path} holds a {meta.get('type')}, not a {cls.__name__}")
    for key in ("fields", "members"):
        if not isinstance(meta.get(key), dict):
            raise InputError(f"{path}: __meta__ lacks {key!r} (a JSON object); received {describe(meta.get(key))}")
    bad = [m for m in meta["members"].values() if not isinstance(m, str) or m not in members]
    if bad:
        raise InputError(f"{path}: __meta__ names member {bad[0]!r}, which the archive lacks (it holds "
                         f"{sorted(members)[:8]})")
    checksums = meta.get("checksums")
    if checksums is not None and (not isinstance(checksums, dict)
                                  or set(checksums) != set(meta["members"].values())):
        raise InputError(f"{path}: __meta__ 'checksums' must list every member once; received "
                         f"{describe(checksums)}")
    return meta


def _read_member(path: Path, archive: zipfile.ZipFile, member: str, checksums: dict | None) -> np.ndarray:
    """One ``.npy`` member: header parsed, its size checked against the archive's, then read and checksummed."""
    info = archive.getinfo(member + ".npy")
    with archive.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fp)
        if dtype.hasobject:
            raise InputError(f"{path}: member {member!r} holds pickled (object) data, which load refuses: "
                             "unpickling can run arbitrary code")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if fp.tell() + nbytes != info.file_size:
            raise InputError(f"{path}: member {member!r} declares {dtype} {tuple(shape)} ({nbytes} bytes) but holds "
                             f"{info.file_size - fp.tell()} bytes of data: the file is damaged")
        flat = np.empty(count, dtype=dtype)
        if fp.readinto(flat.view(np.uint8)) != nbytes or fp.read(1):  # reading to the end checks the zip CRC
            raise InputError(f"{path}: member {member!r} is shorter or longer than its header says: the file is "
                             "damaged")
    arr = flat.reshape(shape, order="F" if fortran else "C")
    if checksums is not None and array_digest(arr) != checksums[member]:
        raise InputError(f"{path}: member {member!r} does not match its checksum: the file is damaged")
    return arr


def _construct(cls, raw_fields, arrays):
    """``cls`` built from decoded fields, every required field present, then its ``_check``."""
    if not isinstance(raw_fields, dict):
        raise InputError(f"the fields of a {cls.__name__} must be a JSON object; received {describe(raw_fields)}")
    try:
        fields = {k: _decode(v, arrays) for k, v in raw_fields.items()}
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        raise InputError(f"the fields of the saved {cls.__name__} are malformed ({type(err).__name__}: {err})") from None
    known = dataclasses.fields(cls)
    missing = [f.name for f in known if f.name not in fields
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"the saved {cls.__name__} lacks field(s) {missing}; a {cls.__name__} has fields "
                         f"{[f.name for f in known]}")
    try:
        result = cls(**{f.name: fields[f.name] for f in known if f.name in fields})
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        raise InputError(f"its fields do not make a {cls.__name__} ({type(err).__name__}: {err})") from None
    result._check()
    return result


# ----------------------------------------------------------------------------- checks for result types' _check


def check_nodes_field(name: str, value) -> int:
    """``value`` must be a list of nodes; returns its length."""
    if not isinstance(value, list) or not all(is_node(n) for n in value):
        raise InputError(f"field {name!r} must be a list of nodes; received {describe(value)}")
    return len(value)


def check_array(name: str, value, shape: tuple, *, optional: bool = False, integer: bool = False) -> tuple:
    """``value`` must be a numpy array or torch tensor of ``shape`` (None: any size); returns its shape."""
    if value is None and optional:
        return ()
    dims = getattr(value, "shape", None)
    if dims is None or not hasattr(value, "dtype"):
        raise InputError(f"field {name!r} must be an array of shape {_shape_text(shape)}; received "
                         f"{describe(value)}")
    dims = tuple(int(d) for d in dims)
    if len(dims) != len(shape) or any(want is not None and want != got for want, got in zip(shape, dims)):
        raise InputError(f"field {name!r} must have shape {_shape_text(shape)}; received shape {dims}")
    if integer and not _is_integer_dtype(value.dtype):
        raise InputError(f"field {name!r} must hold integers; received dtype {value.dtype}")
    return dims


def check_scalar(name: str, value, types=(int, float)) -> None:
    """``value`` must be one of ``types`` (bools only when ``bool`` is listed)."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(t.__name__ for t in types)
        raise InputError(f"field {name!r} must be {expected}; received {describe(value)}")


def _shape_text(shape) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


def _is_integer_dtype(dtype) -> bool:
    try:
        return np.dtype(dtype).kind in "iu"
    except TypeError:  # a torch dtype
        return not dtype.is_floating_point and not dtype.is_complex and str(dtype) != "torch.bool"
