"""Deprecated: moved to :mod:`confounded_patching.interventions.ablation`."""

from ._deprecated import warn_moved
from .interventions.ablation import HOW, AblationResult, ablate, ablation_curve

__all__ = ["ablate", "ablation_curve", "AblationResult", "HOW"]

warn_moved(__name__, "confounded_patching.interventions.ablation")
