"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .interventions.ablation import HOW, AblationResult, ablate, ablation_curve

__all__ = ["ablate", "ablation_curve", "AblationResult", "HOW"]

warn_moved(__name__, "confounded_patching.interventions.ablation")
