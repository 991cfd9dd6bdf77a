"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.confounders import confounder_features, kmeans_topics, one_hot
from .estimation.linalg import pca, randomized_svd, standardize

__all__ = ["pca", "randomized_svd", "standardize", "kmeans_topics", "one_hot", "confounder_features"]

warn_moved(__name__, "confounded_patching.estimation.linalg and confounded_patching.estimation.confounders")
