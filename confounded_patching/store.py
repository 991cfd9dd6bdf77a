"""Deprecated: moved to :mod:`confounded_patching.activations.store`."""

from ._deprecated import warn_moved
from .activations.store import ActivationStore

__all__ = ["ActivationStore"]

warn_moved(__name__, "confounded_patching.activations.store")
