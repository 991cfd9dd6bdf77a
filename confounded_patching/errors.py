"""The library's exceptions: one base class, subclasses only where callers catch them.

:class:`Terminated` is the exception SIGTERM becomes inside :func:`sigterm_as_interrupt`, so that a run
stopped by ``kill`` cleans up as one stopped by Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = [
    "ConfoundedPatchingError",
    "InputError",
    "StoreCorruptError",
    "ArchitectureError",
    "ModelFileNotFound",
    "Terminated",
    "sigterm_as_interrupt",
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


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`sigterm_as_interrupt` was active: handled like Ctrl-C.

    A ``KeyboardInterrupt``, so ``finally`` blocks and ``except KeyboardInterrupt`` run as for Ctrl-C;
    ``exit_code`` is 143 (128 + SIGTERM), the status a shell reports for a process ended by SIGTERM.
    """

    exit_code = 128 + int(signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` instead of ending the process at once.

    Yields whether the handler was installed: only in the main thread, and only where SIGTERM has its
    default action (a handler the caller installed is kept). A second SIGTERM while the first is being
    handled (during cleanup) is ignored. The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield False
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield True
    finally:
        signal.signal(signal.SIGTERM, previous)


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
