"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.simulate import Simulation, additive, gaussian_sem, nonlinear

__all__ = ["Simulation", "gaussian_sem", "additive", "nonlinear"]

warn_moved(__name__, "confounded_patching.estimation.simulate (cp.simulate)")
