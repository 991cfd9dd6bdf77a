"""The library's exceptions: one base class, subclasses only where callers catch them."""

from __future__ import annotations

__all__ = [
    "ConfoundedPatchingError",
    "InputError",
    "StoreCorruptError",
    "ArchitectureError",
    "ModelFileNotFound",
]


class ConfoundedPatchingError(RuntimeError):
    """Base class of every error this library raises on purpose."""


class InputError(ConfoundedPatchingError, ValueError):
    """An argument at the public boundary is not what the function accepts.

    Messages name the argument, what was expected and what was received.
    """


class StoreCorruptError(InputError):
    """A file of an activation store is damaged (checksum mismatch, truncated, unreadable).

    Callers catch it to recollect: ``collect(..., store=DIR)`` with the same
    model recomputes the damaged shards. ``shards`` names the damaged files.
    """

    def __init__(self, message: str, shards=()):
        super().__init__(message)
        self.shards = list(shards)


class ArchitectureError(ConfoundedPatchingError):
    """The model's module layout is not in the architecture table."""


class ModelFileNotFound(ConfoundedPatchingError, FileNotFoundError):
    """A model file that a loader needs is not installed."""


def describe(value) -> str:
    """Short description of a received value for error messages."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        return f"{type(value).__name__} of shape {tuple(shape)}" + (f" and dtype {dtype}" if dtype is not None else "")
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
