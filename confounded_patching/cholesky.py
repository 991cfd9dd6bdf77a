"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.linalg import cholesky_escalating

__all__ = ["cholesky_escalating"]

warn_moved(__name__, "confounded_patching.estimation.linalg")
