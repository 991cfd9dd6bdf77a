"""The settings of the AIE estimator, in one place: :class:`AIEOptions`.

:func:`~.aie.aie_many`, :func:`~.aie.aie` and :func:`~.mediate.mediate`
take the estimator's settings as keyword arguments (documented in
:func:`~.aie.aie_many`); each builds one :class:`AIEOptions` from them and
:meth:`AIEOptions.resolved` checks them once and fills in the ``"auto"``
and ``None`` defaults. Adding a setting means adding a field here and the
keyword to the signatures (``tests/test_aie.py`` checks that they agree).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import InputError, describe
from ..validation import check_auto_bool, check_choice, check_int, resolve_device
from .balancer import check_solver_dtype
from .gamma_rule import GammaRule
from .reliability import ReliabilityRule

__all__ = ["AIEOptions", "VARIANTS", "ESTIMATORS", "WEIGHTS", "FEATURES"]

VARIANTS = ("eq2", "algorithm1")
ESTIMATORS = ("ht", "hajek")
WEIGHTS = ("eb", "parametric")
FEATURES = ("squares", "paper")


@dataclass(frozen=True)
class AIEOptions:
    """The estimator's settings: the keyword arguments of :func:`~.aie.aie_many`, with its defaults.

    After :meth:`resolved`, ``calibrate`` and ``augment`` are bools, ``tol`` a number, ``gamma_rule`` a
    :class:`~.gamma_rule.GammaRule`, ``reliability`` a :class:`~.reliability.ReliabilityRule` and ``device``
    a ``torch.device``.
    """

    K: int = 200
    gamma: object = "auto"
    gamma_x: object = "auto"
    variant: str = "eq2"
    estimator: str = "hajek"
    weights: str = "eb"
    features: str = "squares"
    d_q: int = 25
    d_n: int = 25
    winsorize: float | None = None
    n_boot: int = 200
    ci: float = 0.95
    pairs: object = None
    seed: int = 0
    confounder_kind: str = "auto"
    calibrate: object = "auto"
    chunk_size: int = 64
    dtype: torch.dtype = torch.float32
    tol: float | None = None
    max_iter: int | None = None
    gamma_rule: GammaRule | None = None
    device: object = None
    augment: object = "auto"
    reliability: ReliabilityRule | None = None

    @classmethod
    def from_arguments(cls, arguments: dict) -> "AIEOptions":
        """The options among a call's ``arguments`` (e.g. ``locals()`` of :func:`~.aie.aie_many`)."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls) if f.name in arguments})

    @property
    def squares(self) -> bool:
        """Whether the balance features include the query's squares (``features="squares"``)."""
        return self.features == "squares"

    def resolved(self) -> "AIEOptions":
        """Check every setting (raising :class:`InputError` naming the first bad one) and fill in defaults."""
        check_choice("variant", self.variant, VARIANTS)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("weights", self.weights, WEIGHTS)
        check_choice("features", self.features, FEATURES)
        if self.variant == "algorithm1" and self.estimator != "ht":
            raise InputError("variant='algorithm1' reproduces the paper's printed HT form; estimator must be 'ht'")
        hajek = self.estimator == "hajek"
        for name in ("calibrate", "augment"):
            value = check_auto_bool(name, getattr(self, name))
            if value is True and not hajek:
                raise InputError(f"{name}=True applies to estimator='hajek'; received estimator='ht'")
        for name in ("gamma", "gamma_x"):
            v = getattr(self, name)
            if not (v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and
                                    math.isfinite(v))):
                raise InputError(f"{name} must be 'auto' or a number >= 0; received {describe(v)}")
        if self.winsorize is not None and not (0 <= self.winsorize < 0.5):
            raise InputError(f"winsorize must be None or in [0, 0.5); received {describe(self.winsorize)}")
        if not (0 < self.ci < 1):
            raise InputError(f"ci must be in (0, 1); received {describe(self.ci)}")
        check_int("n_boot", self.n_boot, minimum=0, expected="an int >= 0")
        check_int("seed", self.seed, minimum=0, expected="an int >= 0")
        check_int("K", self.K, minimum=1, expected="a positive int")
        check_solver_dtype("dtype", self.dtype)
        if self.reliability is not None and not isinstance(self.reliability, ReliabilityRule):
            raise InputError(f"reliability must be None or a ReliabilityRule; received {describe(self.reliability)}")
        if self.gamma_rule is not None and not isinstance(self.gamma_rule, GammaRule):
            raise InputError(f"gamma_rule must be None or a GammaRule; received {describe(self.gamma_rule)}")
        check_int("chunk_size", self.chunk_size, minimum=1, expected="a positive int")
        for name in ("d_q", "d_n"):
            check_int(name, getattr(self, name), minimum=1, expected="a positive int")
        return dataclasses.replace(
            self, calibrate=hajek if self.calibrate == "auto" else self.calibrate,
            augment=hajek if self.augment == "auto" else self.augment, tol=1e-4 if self.tol is None else self.tol,
            gamma_rule=self.gamma_rule or GammaRule(), device=resolve_device(self.device),
            reliability=self.reliability or ReliabilityRule())
