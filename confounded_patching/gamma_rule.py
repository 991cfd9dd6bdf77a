"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.gamma_rule import GammaRule, noise_level, select_gamma, select_gamma_x

__all__ = ["GammaRule", "noise_level", "select_gamma", "select_gamma_x"]

warn_moved(__name__, "confounded_patching.estimation.gamma_rule")
