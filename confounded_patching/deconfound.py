"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.mediate import MediationResult, mediate

__all__ = ["mediate", "MediationResult"]

warn_moved(__name__, "confounded_patching.estimation.mediate (cp.mediate)")
