"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.node_coords import ArrayNodes, StoreNodes, node_source

__all__ = ["ArrayNodes", "StoreNodes", "node_source"]

warn_moved(__name__, "confounded_patching.estimation.node_coords")
