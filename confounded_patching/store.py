"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .activations.store import ActivationStore

__all__ = ["ActivationStore"]

warn_moved(__name__, "confounded_patching.activations.store")
