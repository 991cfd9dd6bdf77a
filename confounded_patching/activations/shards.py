"""Safetensors shards that carry their own SHA-256 checksums, verified when read.

A shard records, in its safetensors header (``__metadata__``), the SHA-256
of each tensor's dtype, shape and bytes::

    {"__metadata__": {"format": "confounded_patching.shard/1", "sha256": "{\"MLP(0)@-1\": \"<hex>\", ...}"}, ...}

The checksums travel inside the file that they check, so writing a shard
stays one atomic rename (no second file to keep in step). What a damaged
shard looks like when read:

- a flipped byte in a tensor's data, or in its dtype or shape: the
  tensor's digest does not match;
- a flipped byte in a checksum: that tensor's digest does not match;
- a flipped byte in a tensor's name: the names differ from the checksums';
- a truncated file, a garbled header or a header length that overruns the
  file: safetensors cannot open it.

Each is raised as :class:`~.errors.StoreCorruptError` naming the shard. A
reader verifies only the tensors it reads (``iter_chunks`` of a chunk of
nodes, ``read_column("outcome")``); :func:`verify_file` checks every
tensor. The remaining bytes of a header (JSON whitespace padding) change
nothing that is read.

Cost: one SHA-256 pass over what is read (about 1 GB/s per core with the
CPU's SHA instructions), once per tensor and store object: a
:class:`Checksums` remembers the tensors it has verified (keyed by the
file's inode, size and modification time), so the repeated passes of the
store-backed PCA hash each tensor once. A reader opened with
``defer=True`` (``ActivationStore.load``) leaves the hashing to worker
threads, which read the file's bytes through ``mmap`` while the caller
goes on reading; :meth:`Checksums.wait` collects their verdicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..errors import StoreCorruptError
from ..results import atomic_write

__all__ = ["Checksums", "write_shard", "verify_file", "clean_stale", "SHARD_FORMAT"]

SHARD_FORMAT = "confounded_patching.shard/1"
_RECOMPUTE = "run collect(..., store=DIR) again with the same model to recompute it"
# torch dtype -> safetensors dtype code (the header's "dtype")
_CODES = {getattr(torch, name): code for name, code in (
    ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"), ("int64", "I64"),
    ("int32", "I32"), ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"), ("bool", "BOOL"), ("uint16", "U16"),
    ("uint32", "U32"), ("uint64", "U64"), ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"))
    if hasattr(torch, name)}


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _digest(code: str, shape, data) -> str:
    """SHA-256 of a tensor's dtype code, shape and bytes (as stored)."""
    h = hashlib.sha256(f"{code}|{','.join(str(int(d)) for d in shape)}|".encode())
    h.update(data)
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """:func:`_digest` of a CPU tensor."""
    t = t.contiguous()
    return _digest(_CODES.get(t.dtype, str(t.dtype)), t.shape, memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def write_shard(shard: Path, tensors: dict) -> None:
    """Write ``tensors`` to ``shard`` (atomically), their checksums in the header."""
    from safetensors.torch import save

    sums = {key: tensor_digest(t) for key, t in tensors.items()}
    data = save(tensors, metadata={"format": SHARD_FORMAT, "sha256": json.dumps(sums)})
    atomic_write(shard, lambda tmp: Path(tmp).write_bytes(data))


def _damaged(shard: Path, what: str) -> StoreCorruptError:
    err = StoreCorruptError(f"{shard} is damaged: {what}; {_RECOMPUTE}", shards=[shard.name])
    err.reason = what
    return err


def _checksums_in(metadata: dict | None) -> tuple[dict | None, str | None]:
    """``(checksums, None)`` from a shard's header metadata, or ``(None, why)``."""
    meta = metadata or {}
    if meta.get("format") != SHARD_FORMAT or "sha256" not in meta:
        return None, "its header holds no checksums"
    try:
        sums = json.loads(meta["sha256"])
    except ValueError:
        sums = None
    if not isinstance(sums, dict):
        return None, "its checksums are unreadable"
    return sums, None


def _check_file(shard: Path, keys=None) -> str | None:
    """Why the named tensors of ``shard`` (every tensor when ``keys`` is None) fail their checksums, or None.

    Reads the header and the tensors' bytes straight from the file (``mmap``):
    no tensor is built, and the hashing releases the GIL, so threads run it
    in parallel.
    """
    try:
        with open(shard, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"truncated: the header claims {n} bytes but the file has {size}"
            header = json.loads(fh.read(n))
            sums, why = _checksums_in(header.pop("__metadata__", None))
            if why is not None:
                return why
            if set(sums) != set(header):
                return "its tensors are not those its checksums list (a damaged name?)"
            keys = list(header) if keys is None else list(keys)
            base = 8 + n
            if base == size:
                bad = [k for k in keys if _digest(header[k]["dtype"], header[k]["shape"], b"") != sums[k]]
            else:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
                    bad = []
                    for key in keys:
                        start, end = header[key]["data_offsets"]
                        if not base + start <= base + end <= size:
                            return f"truncated: tensor {key!r} ends beyond the file's {size} bytes"
                        with view[base + start: base + end] as part:
                            if _digest(header[key]["dtype"], header[key]["shape"], part) != sums[key]:
                                bad.append(key)
    except FileNotFoundError:
        return "it is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable safetensors header ({type(err).__name__}: {err})"
    if bad:
        return f"checksum mismatch in tensor {bad[0]!r}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
    return None


def verify_file(shard: Path) -> str | None:
    """Why ``shard`` fails its checksums (every tensor checked), or None if it is intact."""
    return _check_file(shard)


class _Reader:
    """One open shard: ``keys()``, ``get_slice(key)`` and ``get_tensor(key)`` (verified, or recorded to verify later)."""

    def __init__(self, shard: Path, handle, sums: dict | None, checks: "Checksums", stamp, verify: bool,
                 defer: bool):
        self.shard, self._f, self._sums, self._checks, self._stamp = shard, handle, sums, checks, stamp
        self._verify = verify and sums is not None
        self._defer = defer
        self.read: list[str] = []

    def keys(self):
        return self._f.keys()

    def get_slice(self, key: str):
        return self._f.get_slice(key)

    def get_tensor(self, key: str) -> torch.Tensor:
        try:
            t = self._f.get_tensor(key)
        except Exception as err:  # safetensors raises its own error types for damaged data
            raise _damaged(self.shard, f"tensor {key!r} is unreadable ({type(err).__name__}: {err})") from None
        if self._verify and (self._stamp, key) not in self._checks.verified:
            if self._defer:
                self.read.append(key)
            elif tensor_digest(t) != self._sums[key]:
                raise _damaged(self.shard, f"checksum mismatch in tensor {key!r}")
            else:
                self._checks.verified.add((self._stamp, key))
        return t


class Checksums:
    """Opens a store's shards for verified reading and remembers the tensors already verified.

    Args:
        required: whether every shard must carry checksums (stores of format
            2 and later); format 1 shards have none and are read unverified.
    """

    def __init__(self, required: bool = True):
        self.required = required
        self.verified: set = set()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list = []

    @contextlib.contextmanager
    def open(self, shard: Path, *, verify: bool = True, defer: bool = False):
        """Open ``shard`` for reading; raises :class:`StoreCorruptError` if it is missing or damaged.

        With ``defer=True`` the tensors read are hashed by worker threads
        after the shard is closed; call :meth:`wait` before trusting them.
        """
        from safetensors import safe_open

        try:
            st = os.stat(shard)
        except FileNotFoundError:
            raise StoreCorruptError(f"{shard.parent} is incomplete: {shard.name} is missing; {_RECOMPUTE}",
                                    shards=[shard.name]) from None
        try:
            handle = safe_open(str(shard), framework="pt")
        except Exception as err:  # SafetensorError, OSError: a truncated or garbled file
            raise _damaged(shard, f"unreadable safetensors file ({type(err).__name__}: {err})") from None
        stamp = (shard.name, st.st_ino, st.st_size, st.st_mtime_ns)
        with handle as f:
            sums = None
            if self.required:
                sums, why = _checksums_in(f.metadata())
                if why is None and set(sums) != set(f.keys()):
                    why = "its tensors are not those its checksums list (a damaged name?)"
                if why is not None:
                    raise _damaged(shard, why)
            reader = _Reader(shard, f, sums, self, stamp, verify, defer)
            yield reader
        if reader.read:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="shard-checksums")
            self._pending.append((shard, stamp, reader.read, self._pool.submit(_check_file, shard, reader.read)))

    def wait(self) -> None:
        """Wait for the deferred checks; raise :class:`StoreCorruptError` naming every damaged shard."""
        pending, self._pending = self._pending, []
        damaged = []
        try:
            for shard, stamp, keys, future in pending:
                why = future.result()
                if why is None:
                    self.verified.update((stamp, key) for key in keys)
                else:
                    damaged.append((shard, why))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if len(damaged) == 1:
            raise _damaged(*damaged[0])
        if damaged:
            detail = "; ".join(f"{shard.name}: {why}" for shard, why in damaged[:5])
            raise StoreCorruptError(f"{len(damaged)} shards of {damaged[0][0].parent} are damaged: {detail}"
                                    f"{'; ...' if len(damaged) > 5 else ''}; run collect(..., store=DIR) again with the "
                                    "same model to recompute them",
                                    shards=[shard.name for shard, _ in damaged])


def clean_stale(directory: Path) -> int:
    """Remove the temporary files an interrupted write leaves in a store directory; returns how many."""
    removed = 0
    for pattern in (".shard-*.tmp", ".manifest.json.*.tmp"):
        for tmp in directory.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed
