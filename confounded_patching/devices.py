"""Where the entropy-balancing solves run: ``device=`` validated once, at the public boundary.

``resolve_device(None)`` is the CPU. ``"cuda"``, ``"cuda:1"`` or a
``torch.device`` are accepted when torch sees that GPU; asking for one it
does not see is an :class:`~.errors.InputError`, not a silent CPU fallback.
Nothing here changes torch's global settings (``allow_tf32``, matmul
precision): solves on a GPU are instead re-checked in float64 on the CPU
(``EntropyBalancer(verify=...)``).

Example::

    >>> resolve_device(None), resolve_device("cpu")
    (device(type='cpu'), device(type='cpu'))
    >>> resolve_device("cuda")              # on a machine without a GPU
    InputError: device='cuda' asks for a CUDA GPU, but torch.cuda.is_available() is False ...
"""

from __future__ import annotations

import torch

from .errors import InputError, describe

__all__ = ["resolve_device"]

_OPTIONS = "None (CPU), 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"


def resolve_device(device, *, argument: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (None: CPU); raises :class:`InputError` if torch cannot use it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise InputError(f"{argument} must be {_OPTIONS}; received {describe(device)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{argument} must be {_OPTIONS}; received {device!r}") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"{argument}={str(device)!r} asks for a CUDA GPU, but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}, {build}; no GPU visible); use {argument}='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{argument}={str(device)!r}: torch sees {count} CUDA device(s), indices 0..{count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{argument}={str(device)!r} asks for Apple's MPS, but torch.backends.mps.is_available() "
                             f"is False; use {argument}='cpu'")
        return dev
    raise InputError(f"{argument} must be {_OPTIONS}; received {str(device)!r}")
