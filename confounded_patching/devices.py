"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .validation import resolve_device

__all__ = ["resolve_device"]

warn_moved(__name__, "confounded_patching.validation")
