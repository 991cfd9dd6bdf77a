"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.partners import pair_index

__all__ = ["pair_index"]

warn_moved(__name__, "confounded_patching.estimation.partners")
