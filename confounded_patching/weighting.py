"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.ratio_models import (RatioModel, TopicGaussian, embed_lambda_x, fit_eb, fit_gaussian,
                                      fit_topic_gaussian, gamma_max_products)

__all__ = ["RatioModel", "TopicGaussian", "fit_eb", "fit_gaussian", "fit_topic_gaussian", "gamma_max_products",
           "embed_lambda_x"]

warn_moved(__name__, "confounded_patching.estimation.ratio_models")
