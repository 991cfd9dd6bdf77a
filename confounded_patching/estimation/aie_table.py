"""The results of the EB-AIE estimator: :class:`AIEResult` (one node) and :class:`AIETable` (many nodes).

Also the two operations on a finished table that the estimator and :func:`~.mediate.mediate` share:
:func:`mark_unidentified` (nodes the data do not identify become ``nan`` with a reason) and
:func:`warn_unreliable` (one warning per table about unidentified nodes and solves stopped at the
iteration cap). The estimator itself is :mod:`~.aie`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError, describe
from ..results import Result, check_array, check_scalar
from .reliability import UNIDENTIFIED

__all__ = ["AIEResult", "AIETable", "mark_unidentified", "warn_unreliable", "PER_NODE_FIELDS", "SHARED_FIELDS"]

PER_NODE_FIELDS = ("value", "ci_low", "ci_high", "se", "gamma", "gamma_max", "gamma_noise", "ess", "pair_ess", "imbalance",
             "winsorized")
SHARED_FIELDS = ("gamma_x", "ess_x", "imbalance_x", "status_x", "n", "K", "variant", "estimator", "weights", "features",
           "adjusted", "winsorize", "calibrated", "augmented")


@dataclass(frozen=True)
class AIEResult(Result):
    """The AIE of one node, with its interval and diagnostics.

    Attributes:
        value: AIE estimate, in units of the outcome (``nan`` when a weight
            model is infeasible).
        ci_low, ci_high: bootstrap percentile interval over prompts (weights
            held fixed, the same resampled prompts for every node).
        se: bootstrap standard deviation.
        gamma: tolerance on the node's product columns ``q outer n``
            (``nan`` for parametric weights).
        gamma_max: largest |mean| of those columns under uniform weights
            (above it the node's model is uniform).
        gamma_noise: their noise level (``nan`` unless ``gamma="auto"``).
        ess: effective sample size ``(sum pi)^2 / sum pi^2`` of the node's
            weights ``pi_nx`` (out of ``n``).
        pair_ess: effective sample size of the pair weights ``w_ij`` as a
            share of ``n K``.
        imbalance: ``||G^T w||_inf`` of the node's weights.
        status: solver status of the node's weights: ``converged``,
            ``max_iter`` or ``infeasible``.
        winsorized: share of terms clipped by the winsorization.
        gamma_x, ess_x, imbalance_x, status_x: the same for ``pi_x`` (``nan``
            / ``"none"`` when unadjusted).
        n: prompts; K: partners per prompt.
        variant, estimator, weights, features, winsorize: the settings used.
        adjusted: whether a confounder was balanced.
        calibrated, augmented: whether the Hajek totals were calibrated and
            the outcome-model augmentation added.
        query_corr: largest canonical correlation between the node's and the
            query's coordinates (given the confounder when adjusted): near 1,
            the node is nearly determined by the query (no overlap).
        detectable: the smallest AIE that any estimator could tell from 0 at
            this node (two-sided 5%, power 80%; in units of the outcome): a
            Cramer-Rao floor from the node's variation that the query and
            confounder leave free (:mod:`~.detectable`). A value of that size
            or smaller says nothing about the node.
        reliable: whether the value can be trusted by the rule of
            :mod:`~.reliability` (``False`` for every ``nan`` value).
        reason: why not (``""`` when reliable).
    """

    value: float
    ci_low: float
    ci_high: float
    se: float
    gamma: float
    gamma_max: float
    gamma_noise: float
    ess: float
    pair_ess: float
    imbalance: float
    status: str
    winsorized: float
    gamma_x: float
    ess_x: float
    imbalance_x: float
    status_x: str
    n: int
    K: int
    variant: str
    estimator: str
    weights: str
    features: str
    adjusted: bool
    winsorize: float = 0.0
    calibrated: bool = False
    augmented: bool = False
    query_corr: float = float("nan")
    detectable: float = float("nan")
    reliable: bool = True
    reason: str = ""
    kind: str = "aie"

    def _check(self) -> None:
        """Every estimate and diagnostic is a number, the statuses strings (run by ``load``)."""
        from dataclasses import fields as dataclass_fields

        for f in dataclass_fields(self):
            check_scalar(f.name, getattr(self, f.name), (str,) if f.type == "str" else
                         (bool,) if f.type == "bool" else (int, float))


@dataclass(frozen=True)
class AIETable(Result):
    """AIEs of many nodes: entry ``i`` of every per-node field belongs to node ``i``.

    Per-node fields (numpy arrays, ``status`` a list) are those of
    :class:`AIEResult`: ``value``, ``ci_low``, ``ci_high``, ``se``,
    ``gamma``, ``gamma_max``, ``gamma_noise``, ``ess``, ``pair_ess``,
    ``imbalance``, ``status``, ``winsorized``, ``query_corr``, ``detectable``, ``reliable``
    (bool array) and ``reason`` (list of str). ``boot`` holds the bootstrap
    replicates ``[n_nodes, n_boot]``, computed from the same resampled
    prompts for every node, so contrasts between nodes can be bootstrapped
    too. The other fields are shared. ``table[i]`` is node ``i``'s
    :class:`AIEResult`; ``to_dataframe()`` gives one row per node.
    """

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    se: np.ndarray
    gamma: np.ndarray
    gamma_max: np.ndarray
    gamma_noise: np.ndarray
    ess: np.ndarray
    pair_ess: np.ndarray
    imbalance: np.ndarray
    status: list
    winsorized: np.ndarray
    boot: np.ndarray
    gamma_x: float
    ess_x: float
    imbalance_x: float
    status_x: str
    n: int
    K: int
    variant: str
    estimator: str
    weights: str
    features: str
    adjusted: bool
    winsorize: float = 0.0
    calibrated: bool = False
    augmented: bool = False
    gamma_rule: dict = field(default_factory=dict)
    query_corr: np.ndarray | None = None
    reliable: np.ndarray | None = None
    reason: list | None = None
    detectable: np.ndarray | None = None
    reliability: dict = field(default_factory=dict)
    kind: str = "aie_table"

    def __len__(self) -> int:
        return len(self.value)

    def _check(self) -> None:
        """Per-node fields have one entry per node, ``boot`` is ``[n_nodes, n_boot]`` (run by ``load``)."""
        (k,) = check_array("value", self.value, (None,))
        for name in PER_NODE_FIELDS:
            check_array(name, getattr(self, name), (k,))
        check_array("boot", self.boot, (k, None))
        check_array("query_corr", self.query_corr, (k,), optional=True)
        check_array("detectable", self.detectable, (k,), optional=True)
        check_array("reliable", self.reliable, (k,), optional=True)
        for name in ("status", "reason"):
            value = getattr(self, name)
            if (value is not None or name == "status") and (not isinstance(value, list) or len(value) != k):
                raise InputError(f"field {name!r} must be a list with one entry per node ({k}); received "
                                 f"{describe(value)}")

    def __getitem__(self, i: int) -> AIEResult:
        i = range(len(self))[i]
        per = {k: float(getattr(self, k)[i]) for k in PER_NODE_FIELDS}
        shared = {k: getattr(self, k) for k in SHARED_FIELDS}
        extra = {}
        if self.query_corr is not None:
            extra["query_corr"] = float(self.query_corr[i])
        if self.detectable is not None:
            extra["detectable"] = float(self.detectable[i])
        if self.reliable is not None:
            extra["reliable"] = bool(self.reliable[i])
        if self.reason is not None:
            extra["reason"] = self.reason[i]
        return AIEResult(status=self.status[i], **per, **shared, **extra)

    def to_dataframe(self, nodes: Sequence | None = None):
        """Long-form table, one row per node (``node`` column from ``nodes`` if given, else 0..n-1)."""
        import pandas as pd

        if nodes is not None and len(nodes) != len(self):
            raise InputError(f"nodes must have one entry per row ({len(self)}); received {describe(nodes)}")
        df = pd.DataFrame({k: getattr(self, k) for k in PER_NODE_FIELDS})
        df.insert(len(df.columns), "status", self.status)
        k = len(self)
        df["query_corr"] = self.query_corr if self.query_corr is not None else np.full(k, np.nan)
        df["detectable"] = self.detectable if self.detectable is not None else np.full(k, np.nan)
        df["reliable"] = (np.asarray(self.reliable, dtype=bool) if self.reliable is not None
                          else np.isfinite(np.asarray(self.value, dtype=float)))
        df["reason"] = self.reason if self.reason is not None else [""] * k
        df.insert(0, "node", [str(n) for n in nodes] if nodes is not None else np.arange(len(self)))
        for k in SHARED_FIELDS:
            df[k] = getattr(self, k)
        return df


def mark_unidentified(table: AIETable, mask, reasons) -> AIETable:
    """``table`` with the nodes where ``mask`` is true set to ``nan``, status ``"unidentified"``, unreliable, with
    ``reasons[i]`` (a list of str, one per node)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return table
    nan_fields = {k: np.where(mask, np.nan, getattr(table, k)) for k in ("value", "ci_low", "ci_high", "se")}
    if table.detectable is not None:
        nan_fields["detectable"] = np.where(mask, np.nan, table.detectable)
    boot = np.where(mask[:, None], np.nan, table.boot)
    status = [UNIDENTIFIED if bad else s for bad, s in zip(mask, table.status)]
    reliable = np.asarray(table.reliable, dtype=bool) & ~mask
    reason = [r if bad else old for bad, r, old in zip(mask, reasons, table.reason or [""] * len(table))]
    return dataclasses.replace(table, boot=boot, status=status, reliable=reliable, reason=reason, **nan_fields)


def warn_unreliable(table: AIETable, *, stacklevel: int = 1) -> None:
    """Warn once per table about nodes whose AIE is unidentified or whose weights hit the iteration cap."""
    name = "adjusted" if table.adjusted else "unadjusted"
    bad = [i for i, s in enumerate(table.status) if s == UNIDENTIFIED]
    if bad:
        warnings.warn(f"{name} EB-AIE: {len(bad)} of {len(table)} node(s) are not identified by the data and get "
                      f"nan (node {bad[0]}: {table.reason[bad[0]]}); see the table's status and reason",
                      stacklevel=stacklevel + 1)
    stuck = [i for i, s in enumerate(table.status) if s == "max_iter"]
    if stuck or table.status_x == "max_iter":
        what = f"{len(stuck)} of {len(table)} node model(s)" if stuck else "the topic model pi_x"
        if stuck and table.status_x == "max_iter":
            what += " and the topic model pi_x"
        warnings.warn(f"{name} EB-AIE: the entropy-balancing weights of {what} stopped at the iteration cap "
                      "(status 'max_iter') without meeting the tolerance; those values are flagged unreliable. "
                      "Raise max_iter or lower d_q / d_n", stacklevel=stacklevel + 1)
