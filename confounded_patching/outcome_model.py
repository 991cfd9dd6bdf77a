"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.outcome_model import ALPHA, fit_outcome, fit_outcomes, partner_means

__all__ = ["ALPHA", "fit_outcome", "fit_outcomes", "partner_means"]

warn_moved(__name__, "confounded_patching.estimation.outcome_model")
