"""Old module paths, kept for one release: each re-exports its public names and warns when imported."""

from __future__ import annotations

import warnings

__all__ = ["warn_moved"]


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` moved to ``new`` (call it from the old module's body).

    The warning points at the line that imported the old module (``warnings`` skips importlib's own
    frames when it counts the stack level).
    """
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)
