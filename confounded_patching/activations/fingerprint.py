"""Fingerprints of the model and tokenizer that filled an activation store.

An activation store resumes across processes, so it must know that the
shards already on disk were computed by the model and tokenizer of the call
that resumes it. ``collect(..., store=DIR)`` records :func:`identity` in the
store's manifest and refuses to resume (or reuse) the store with anything
else (:func:`identity_mismatch` says what differs).

The model's fingerprint is

- its architecture: family, layers, heads, head dimension, ``d_model`` and
  the module class;
- its configuration: the JSON scalars of ``config.to_dict()`` (or
  TransformerLens' ``cfg``), minus bookkeeping keys (name, versions,
  attention kernel, dtype, device). Only keys present on both sides are
  compared, so a library upgrade that adds keys does not refuse a resume;
- a SHA-256 of every parameter and buffer (name, dtype, shape, bytes), the
  weights as loaded. This is exact: any changed weight, however slightly,
  changes it, and it does not depend on the device, the batch or the
  attention kernel, which a probe forward pass would (float rounding differs
  between CPU and GPU kernels, so a probe would refuse legitimate resumes on
  another machine, or need a tolerance that lets slightly different weights
  through). It costs one pass over the weights, hashed in up to 4 threads
  (0.6 to 0.8 s for SmolLM2's 135M float32 parameters on a busy 2-core
  host, about 2 % of capturing 1,000 prompts); see docs/scale.md. Weights that are not
  materialised (``meta`` tensors, as in nnsight's remote models) are not
  hashed; the model's name and configuration identify it then.

The tokenizer's fingerprint is its class, vocabulary size, a SHA-256 of the
vocabulary (token → id) and of the ids of a fixed probe text, which also
catches normalisation and special-token (BOS) differences.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

__all__ = ["identity", "model_fingerprint", "tokenizer_fingerprint", "identity_mismatch"]

PROBE_TEXT = " The quick brown fox, 1234 jumps over 56.78 lazy DOGS!\tÜnïcödé 漢字 café\n end"

# configuration keys that say how a model was loaded or run, not what it computes
_VOLATILE = {"_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "architectures",
             "torch_dtype", "dtype", "device", "n_devices", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict", "torchscript", "use_return_dict", "attn_implementation",
             "tokenizer_name", "tokenizer_prepends_bos", "model_name", "original_architecture"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(value):
    """The value if it is made of JSON scalars, lists and str-keyed dicts; else None (dropped)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _jsonable(v) for k, v in value.items()}
        return None if any(items[k] is None and value[k] is not None for k in value) else items
    return None


def _config(module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        config = getattr(module, "cfg", None)
    if config is None:
        return {}
    try:
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    except Exception:  # an exotic config object: the weights still identify the model
        return {}
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key.startswith("_") or key in _VOLATILE:
            continue
        clean = _jsonable(value)
        if clean is not None or value is None:
            out[key] = clean
    return out


def _name(module) -> str | None:
    config = getattr(module, "config", None)
    for attr in ("_name_or_path", "name_or_path", "model_name"):
        value = getattr(config, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _tensor_digest(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return hashlib.sha256(memoryview(t.view(torch.uint8).numpy())).digest()


def weights_digest(module) -> str | None:
    """SHA-256 over every parameter and buffer of ``module`` (name, dtype, shape and the SHA-256 of its bytes).

    The tensors are hashed in a few threads (hashlib releases the GIL), so
    the cost is about one pass over the weights divided by the cores used.
    None if some tensor is not materialised (``meta``).
    """
    from concurrent.futures import ThreadPoolExecutor

    tensors = list(module.named_parameters()) + list(module.named_buffers())
    if any(t.is_meta for _, t in tensors):
        return None
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        digests = list(pool.map(_tensor_digest, [t for _, t in tensors]))
    h = hashlib.sha256()
    for (name, t), digest in zip(tensors, digests):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(digest)
    return h.hexdigest()


def model_fingerprint(adapter) -> dict:
    """Architecture, configuration and weights digest of an adapted model (see the module docstring)."""
    module = adapter.module
    spec = adapter.spec
    return {"family": spec.family, "class": type(module).__name__, "n_layers": spec.n_layers,
            "n_heads": spec.n_heads, "head_dim": spec.head_dim, "d_model": spec.d_model,
            "name": _name(module), "weights": weights_digest(module), "config": _config(module)}


def tokenizer_fingerprint(tokenizer) -> dict | None:
    """Class, vocabulary size and digests of the vocabulary and of a probe encoding (None without a tokenizer)."""
    if tokenizer is None:
        return None
    out = {"class": type(tokenizer).__name__}
    vocab = None
    if hasattr(tokenizer, "get_vocab"):
        try:
            vocab = tokenizer.get_vocab()
        except Exception:  # some tokenizers do not expose it; the probe still identifies them
            vocab = None
    if vocab is not None:
        out["vocab_size"] = len(tokenizer) if hasattr(tokenizer, "__len__") else len(vocab)
        out["vocab"] = _sha(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    try:
        ids = list(tokenizer(PROBE_TEXT)["input_ids"])
        out["probe"] = _sha(np.asarray(ids, dtype=np.int64).tobytes())
    except Exception:  # a tokenizer that cannot encode the probe: the vocabulary identifies it
        pass
    return out


def identity(adapter) -> dict:
    """The model and tokenizer fingerprints a store records."""
    return {"model": model_fingerprint(adapter), "tokenizer": tokenizer_fingerprint(adapter.tokenizer)}


def _short(digest) -> str:
    return digest[:12] + "…" if isinstance(digest, str) else "(not hashed)"


def describe_model(fp: dict) -> str:
    arch = f"{fp.get('family')}, {fp.get('n_layers')} layers, d_model {fp.get('d_model')}"
    name = f"{fp['name']}, " if fp.get("name") else ""
    return f"{_short(fp.get('weights'))} ({name}{arch})"


def describe_tokenizer(fp: dict) -> str:
    return f"{_short(fp.get('vocab') or fp.get('probe'))} ({fp.get('class')}, vocabulary of {fp.get('vocab_size')})"


def _model_difference(old: dict, new: dict) -> str | None:
    for key in ("family", "class", "n_layers", "n_heads", "head_dim", "d_model"):
        if old.get(key) != new.get(key):
            return f"its architecture differs ({key} {old.get(key)!r} vs {new.get(key)!r})"
    if old.get("weights") is not None and new.get("weights") is not None:
        if old["weights"] != new["weights"]:
            return "its weights differ"
    elif old.get("weights") != new.get("weights") or old.get("name") != new.get("name"):
        return "its weights cannot be compared (not loaded in one of the two) and its name differs or is unknown"
    oc, nc = old.get("config", {}), new.get("config", {})
    changed = [k for k in sorted(set(oc) & set(nc)) if oc[k] != nc[k]]
    if changed:
        shown = ", ".join(f"{k} {oc[k]!r} vs {nc[k]!r}" for k in changed[:3])
        return f"its configuration differs ({shown}{', ...' if len(changed) > 3 else ''})"
    return None


def _tokenizer_difference(old: dict, new: dict) -> str | None:
    for key, what in (("class", "class"), ("vocab_size", "vocabulary size"), ("vocab", "vocabulary"),
                      ("probe", "encoding of a probe text")):
        if key in old and key in new and old[key] != new[key]:
            if key in ("vocab", "probe"):
                return f"its {what} differs"
            return f"its {what} differs ({old[key]!r} vs {new[key]!r})"
    return None


def identity_mismatch(path, old: dict | None, new: dict | None) -> str | None:
    """A message saying how ``new`` differs from the identity ``old`` recorded in the store at ``path``, or None."""
    advice = "use a new directory, or delete this one to recollect"
    if old == new:
        return None
    if old is None or new is None:
        recorded = "no model fingerprint" if old is None else "a model fingerprint"
        given = "none" if new is None else "one"
        return f"the store at {path} records {recorded}; this call gives {given}: {advice}"
    om, nm = old.get("model") or {}, new.get("model") or {}
    why = _model_difference(om, nm)
    if why:
        return (f"the store at {path} was collected with model {describe_model(om)}; this call's model is "
                f"{describe_model(nm)}: {why}. Resuming would mix two models' activations: {advice}")
    ot, nt = old.get("tokenizer"), new.get("tokenizer")
    if ot is not None and nt is not None:
        why = _tokenizer_difference(ot, nt)
        if why:
            return (f"the store at {path} was collected with tokenizer {describe_tokenizer(ot)}; this call's "
                    f"tokenizer is {describe_tokenizer(nt)}: {why}. Use the store's tokenizer, or {advice}")
    return None
