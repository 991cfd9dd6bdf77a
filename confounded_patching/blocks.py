"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.linalg import BLOCK_FLOATS, block_rows

__all__ = ["BLOCK_FLOATS", "block_rows"]

warn_moved(__name__, "confounded_patching.estimation.linalg")
