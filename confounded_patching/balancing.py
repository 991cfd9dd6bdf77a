"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.balancer import EntropyBalancer
from .estimation.features import balance_features, block_gamma, feature_layout, gamma_max

__all__ = ["EntropyBalancer", "balance_features", "block_gamma", "feature_layout", "gamma_max"]

warn_moved(__name__, "confounded_patching.estimation.balancer and confounded_patching.estimation.features")
