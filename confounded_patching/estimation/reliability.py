"""Which EB-AIEs to trust: identifiability guards and the per-node ``reliable`` flag.

The EB-AIE is identified only where the data hold prompts whose node value
is unusual given their query (overlap, or positivity). Two checks run on
every node:

- **Identifiability guards** (:func:`unidentified`): a constant query, a
  constant node, or a node whose coordinates are (numerically) a linear
  function of the query's (largest canonical correlation at least
  ``1 - 1e-6``; the node *is* the query) leave the AIE undefined by the data.
  Such a node gets ``value = nan``, status ``"unidentified"`` and the reason.
  The coordinates are computed from inputs rescaled by a power of 2
  (:func:`~.node_coords.rescaled`), so scaling the query or a node by any
  factor changes nothing, and inputs near the float64 limits (``1e+-200``)
  are handled like any other.
- **The reliable flag** (:class:`ReliabilityRule`, :func:`assess`): a node's
  value is flagged unreliable, with a short reason, when its weights are not
  a converged balance, when the topic model's effective sample size is a
  small share of the prompts, when the node is nearly determined by the
  query (its largest canonical correlation with the query, given the
  confounder when adjusted), when the pair weights rest on a handful of
  pairs, or (opt-in, ``max_detectable``) when no estimator could tell an
  effect of the size that matters from 0 at the node (:mod:`~.detectable`).
  On the held-out part of the planted-truth family
  (``benchmarks/studies/family.py``, ``docs/estimator.md`` section 9) the
  topic-only nodes it calls reliable are below 15% of the causal effect in
  90% of cases, and it calls no causal node reliable: there the nodes are
  close to functions of the query, and the information bound of that
  benchmark shows that few of them could be estimated within 25% by any
  estimator.

Why canonical correlation: for jointly Gaussian query and node with
canonical correlations ``rho_k``, the stabilized weights ``f(q) f(n) / f(q,
n)`` that the AIE's cross-world weights are built from have finite variance
only when every ``rho_k < 1/2`` (:func:`~.linalg.canonical_correlation`).
Above it an estimate rests on the weight model's extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError, describe

__all__ = ["ReliabilityRule", "assess", "unidentified", "UNIDENTIFIED", "DETERMINED"]

UNIDENTIFIED = "unidentified"
DETERMINED = 1 - 1e-6  # canonical correlation at which the node counts as a function of the query


@dataclass(frozen=True)
class ReliabilityRule:
    """Thresholds of the ``reliable`` flag (see :func:`assess`).

    Attributes:
        max_query_corr: largest canonical correlation between the node's and
            the query's coordinates (partial, given the confounder, when
            adjusted) above which the node is nearly determined by the query.
        min_ess_x: smallest effective sample size of the topic model ``pi_x``,
            as a share of the prompts (adjusted estimator only).
        min_pair_ess: smallest effective sample size of the pair weights, as a
            share of ``n K``.
        max_detectable: the largest acceptable smallest-detectable AIE, in
            units of the outcome (``None``, the default: not checked). Set it to
            the smallest effect that matters (e.g. the interventional AIEs'
            scale) to flag nodes at which no estimator could see such an effect
            (:mod:`~.detectable`).
    """

    max_query_corr: float = 0.7
    min_ess_x: float = 0.1
    min_pair_ess: float = 1e-3
    max_detectable: float | None = None

    def __post_init__(self):
        for name in ("max_query_corr", "min_ess_x", "min_pair_ess", "max_detectable"):
            value = getattr(self, name)
            if value is None and name == "max_detectable":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
                raise InputError(f"ReliabilityRule.{name} must be a finite number >= 0"
                                 f"{' or None' if name == 'max_detectable' else ''}; received {describe(value)}")

    def to_dict(self) -> dict:
        return asdict(self)


def unidentified(query_constant: bool, constant: np.ndarray, query_corr: np.ndarray) -> list:
    """Per node: the reason its AIE is not identified by the data, or ``""``."""
    out = []
    for const, rho in zip(constant, query_corr):
        if query_constant:
            out.append("the query is constant: no variation to reweight")
        elif const:
            out.append("the node is constant: it has no value to swap")
        elif rho >= DETERMINED:
            out.append(f"the node is a linear function of the query (canonical correlation {rho:.6f})")
        else:
            out.append("")
    return out


def assess(status, query_corr, pair_ess, ess_x: float, n: int, adjusted: bool,
           rule: ReliabilityRule | None = None, prior: list | None = None,
           status_x: str = "converged", detectable=None) -> tuple[np.ndarray, list]:
    """The ``reliable`` flag and its reason per node (``reason`` is ``""`` for reliable nodes).

    ``prior``: reasons already known (e.g. :func:`unidentified`), kept first. ``detectable``: per node, the
    smallest detectable AIE (:mod:`~.detectable`), checked against ``rule.max_detectable`` when both are given.
    """
    rule = rule or ReliabilityRule()
    k = len(status)
    reasons = [[] if not prior or not prior[i] else [prior[i]] for i in range(k)]
    for i in range(k):
        if reasons[i]:
            continue
        st = status[i]
        if st == "infeasible":
            reasons[i].append("infeasible balance (no weights satisfy it)")
        elif st != "converged":
            reasons[i].append(f"weights not converged ({st})")
        rho = float(query_corr[i])
        if math.isfinite(rho) and rho > rule.max_query_corr:
            reasons[i].append(f"node nearly determined by the query (canonical correlation {rho:.3f} > "
                              f"{rule.max_query_corr:g})")
        pe = float(pair_ess[i])
        if st != "infeasible" and math.isfinite(pe) and pe < rule.min_pair_ess:
            reasons[i].append(f"pair weights concentrated (ESS {pe:.1e} of n*K < {rule.min_pair_ess:g})")
        if adjusted and status_x not in ("converged", "none"):
            reasons[i].append(f"topic model not converged ({status_x})")
        if adjusted and math.isfinite(ess_x) and ess_x < rule.min_ess_x * n:
            reasons[i].append(f"topics barely overlap in query space (topic-model ESS {ess_x:.0f} of {n})")
        if rule.max_detectable is not None and detectable is not None:
            det = float(detectable[i])
            if not det <= rule.max_detectable:  # nan counts as too large
                reasons[i].append(f"no estimator could tell an effect of the size that matters from 0 here "
                                  f"(smallest detectable AIE {det:.3g} > max_detectable {rule.max_detectable:.3g})")
    reliable = np.array([not r for r in reasons], dtype=bool)
    return reliable, ["; ".join(r) for r in reasons]
