"""Deprecated module path, kept for one release: its public names, re-exported from their new homes."""

from ._deprecated import warn_moved
from .estimation.aie import AIEResult, AIETable, aie, aie_many
from .estimation.gamma_rule import GammaRule, select_gamma
from .estimation.partners import pair_index

__all__ = ["aie", "aie_many", "AIEResult", "AIETable", "pair_index", "select_gamma", "GammaRule"]

warn_moved(__name__, "confounded_patching.estimation.aie (cp.aie, cp.aie_many)")
