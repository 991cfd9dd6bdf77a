"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .interventions.clean_corrupt import DIRECTIONS, METHODS, PatchingResult
from .interventions.patching import patch
from .interventions.resample import ResampleResult, draw_pairs, resample

__all__ = ["patch", "resample", "PatchingResult", "ResampleResult", "DIRECTIONS", "METHODS", "draw_pairs"]

warn_moved(__name__, "confounded_patching.interventions.patching and confounded_patching.interventions.resample")
