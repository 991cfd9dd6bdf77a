"""Exact confirmation of a fast AIE: its top nodes, and a random sample of the rest, run exactly.

A first-order or ``auto`` resample AIE (:func:`~.resample.resample`) is
fast because it linearizes; :func:`confirm` measures what that costs on the
run at hand. It runs the exact resample AIE on the ``top_k`` nodes of the
result by ``|value|`` and on ``n_random`` other nodes drawn at random (so
the agreement is not measured on large values only), on the result's own
pairs when it has them, and returns both values side by side with their
agreement: Spearman and Pearson correlation, Spearman of ``|value|``, the
overlap of the top nodes, and per pair (the median over pairs of the
Spearman correlation across nodes). Nodes the result computed exactly are
not rerun.

Example::

    >>> fast = cp.resample(model, prompts, nodes, metric, strata=topics, method="auto")
    >>> check = cp.confirm(model, prompts, fast, metric, top_k=30, n_random=30)
    >>> check.agreement, check.verdict           # {'spearman_abs': 0.94, ...}, 'trust'
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, describe
from ..metrics import as_metric
from ..models import adapt
from ..results import Result, check_array, check_nodes_field, node_columns, resample_tag
from ..validation import check_bool, check_int
from .resample import ResampleResult, draw_pairs, resample

__all__ = ["confirm", "Confirmation", "agreement", "verdict", "TRUST", "CAUTION"]

#: Agreement with exact that earns the verdict "trust": Spearman of |value| and Pearson both at least this.
TRUST = 0.9
#: Below :data:`TRUST` but both at least this: "caution"; lower: "do not trust".
CAUTION = 0.7
#: Fewer confirmed nodes than this cannot earn "trust" (correlations of a handful of nodes are noise).
MIN_NODES = 10


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def agreement(estimate, exact, estimate_effects=None, exact_effects=None, *, k: int = 10) -> dict:
    """Agreement of estimated with exact values over nodes (and over pairs, when effects are given).

    Returns ``spearman``, ``spearman_abs`` (do they agree on which nodes matter), ``pearson``,
    ``top_overlap`` (share of the top ``k`` by ``|value|`` in common), ``per_pair_spearman`` (median over
    pairs of the Spearman correlation across nodes; NaN without per-pair effects) and ``n`` (nodes).
    """
    est, ex = np.asarray(estimate, float), np.asarray(exact, float)
    ok = np.isfinite(est) & np.isfinite(ex)
    est, ex = est[ok], ex[ok]
    kk = min(k, len(est))
    overlap = (len(set(np.argsort(-np.abs(est))[:kk]) & set(np.argsort(-np.abs(ex))[:kk])) / kk) if kk else np.nan
    per_pair = float("nan")
    if estimate_effects is not None and exact_effects is not None and len(est) >= 3:
        a, b = np.asarray(estimate_effects, float)[:, ok], np.asarray(exact_effects, float)[:, ok]
        rows = [_spearman(a[r], b[r]) for r in range(len(a))]
        rows = [r for r in rows if np.isfinite(r)]
        per_pair = float(np.median(rows)) if rows else float("nan")
    return {"n": int(len(est)), "spearman": _spearman(est, ex), "spearman_abs": _spearman(np.abs(est), np.abs(ex)),
            "pearson": _pearson(est, ex), "top_overlap": float(overlap), "top_k": int(kk),
            "per_pair_spearman": per_pair}


def verdict(stats: dict) -> str:
    """``"trust"``, ``"caution"`` or ``"do not trust"`` from :func:`agreement`'s Spearman of |value| and Pearson."""
    rho, r = stats.get("spearman_abs", np.nan), stats.get("pearson", np.nan)
    if not (np.isfinite(rho) and np.isfinite(r)):
        return "do not trust"
    if rho >= TRUST and r >= TRUST and stats.get("n", 0) >= MIN_NODES:
        return "trust"
    if rho >= CAUTION and r >= CAUTION:
        return "caution"
    return "do not trust"


@dataclass(frozen=True)
class Confirmation(Result):
    """A fast AIE next to the exact resample AIE of some of its nodes.

    Attributes:
        nodes: the confirmed nodes.
        estimate: the checked result's AIE at those nodes ``[k]``.
        exact: the exact resample AIE at those nodes ``[k]`` (same pairs where the result had pairs).
        exact_se: its standard error ``[k]``.
        selected: why each node was confirmed: ``"top"`` (largest ``|estimate|``) or ``"random"``.
        methods: how the checked result computed each node (``"attribution"``).
        pairs: the (i, j) pairs of the exact run ``[n_pairs, 2]``.
        estimate_effects, exact_effects: per pair and node ``[n_pairs, k]``; ``estimate_effects`` is None
            when the checked result averaged over every donor (``n_pairs="all"``).
        checked: the checked result's method tag; stratified: whether donors shared i's stratum.
        n_exact_nodes: nodes the checked result had already computed exactly (not rerun).
        seconds: wall time of the exact run.
    """

    nodes: list
    estimate: np.ndarray
    exact: np.ndarray
    exact_se: np.ndarray
    selected: list
    methods: list
    pairs: np.ndarray
    exact_effects: np.ndarray
    estimate_effects: np.ndarray | None = None
    checked: str = ""
    stratified: bool = False
    n_exact_nodes: int = 0
    seconds: float = 0.0

    def _check(self) -> None:
        k = check_nodes_field("nodes", self.nodes)
        for name in ("estimate", "exact", "exact_se"):
            check_array(name, getattr(self, name), (k,))
        p, _ = check_array("exact_effects", self.exact_effects, (None, k))
        check_array("estimate_effects", self.estimate_effects, (p, k), optional=True)
        check_array("pairs", self.pairs, (p, 2), integer=True)
        if len(self.selected) != k or len(self.methods) != k:
            raise InputError(f"fields 'selected' and 'methods' must have one entry per node ({k}); received "
                             f"{len(self.selected)} and {len(self.methods)}")

    @property
    def agreement(self) -> dict:
        """:func:`agreement` of the estimate with exact over the confirmed nodes."""
        return agreement(self.estimate, self.exact, self.estimate_effects, self.exact_effects)

    @property
    def verdict(self) -> str:
        """``"trust"``, ``"caution"`` or ``"do not trust"`` (:func:`verdict`); ``"exact"`` if nothing needed it."""
        return "exact" if not self.nodes else verdict(self.agreement)

    def summary(self) -> str:
        """One line: nodes confirmed, agreement and verdict."""
        if not self.nodes:
            return f"every one of the {self.n_exact_nodes} nodes was computed exactly: nothing to confirm"
        a = self.agreement
        top = sum(s == "top" for s in self.selected)
        return (f"{self.verdict}: on {a['n']} nodes run exactly ({top} top, {a['n'] - top} random), Spearman of "
                f"|value| {a['spearman_abs']:.2f}, Pearson {a['pearson']:.2f}, top-{a['top_k']} overlap "
                f"{a['top_overlap']:.2f}" + ("" if np.isnan(a["per_pair_spearman"]) else
                                             f", per-pair Spearman {a['per_pair_spearman']:.2f}"))

    def to_dataframe(self):
        """One row per confirmed node: ``value`` (exact), ``estimate``, ``se``, ``selected``, ``computed``."""
        import pandas as pd

        tag = resample_tag(self.stratified)
        return pd.DataFrame([{**node_columns(n), "method": tag, "value": float(x), "se": float(s),
                              "estimate": float(e), "selected": sel, "computed": how, "checked": self.checked}
                             for n, x, s, e, sel, how in zip(self.nodes, self.exact, self.exact_se, self.estimate,
                                                              self.selected, self.methods)])


def confirm(model, prompts, result: ResampleResult, outcome, *, top_k: int = 30, n_random: int = 30,
            n_pairs: int = 32, seed: int = 0, batch_size: int = 64, tokenizer=None, progress: bool = True,
            prefix_cache: bool = True) -> Confirmation:
    """Run the exact resample AIE on the top nodes of a fast result and on a random sample of the others.

    Args:
        model, prompts, outcome: as given to :func:`~.resample.resample` for ``result``.
        result: a :class:`~.resample.ResampleResult` with first-order nodes (``method="attribution"`` or
            ``"auto"``).
        top_k: its nodes with the largest ``|value|`` to confirm.
        n_random: further nodes, drawn at random from the rest.
        n_pairs: pairs of the exact run when ``result`` averaged over all donors (else its own pairs).
        seed: seed of the random nodes and of those pairs.

    Returns:
        :class:`Confirmation`: ``agreement``, ``verdict``, ``summary()`` and the values side by side.
    """
    if not isinstance(result, ResampleResult):
        raise InputError(f"result must be a ResampleResult (from cp.resample); received {describe(result)}")
    check_int("top_k", top_k, minimum=0, expected="an int >= 0")
    check_int("n_random", n_random, minimum=0, expected="an int >= 0")
    check_int("seed", seed, minimum=0, expected="an int >= 0")
    check_bool("progress", progress)
    m = len(result.baseline)
    try:
        n_prompts = len(prompts)
    except TypeError:
        raise InputError(f"prompts must be the {m} prompts the result was computed on; received "
                         f"{describe(prompts)}") from None
    if n_prompts != m:
        raise InputError(f"prompts must be the {m} prompts the result was computed on; received {n_prompts}")
    name = as_metric(outcome, adapt(model, tokenizer).tokenizer, argument="outcome").name
    if name != result.outcome:
        raise InputError(f"outcome {name!r} is not the result's outcome {result.outcome!r}; confirm a result "
                         "with the metric it was computed with")
    methods = result.node_methods
    fast = [k for k, how in enumerate(methods) if how != "exact"]
    rng = np.random.default_rng(seed)
    by_size = sorted(fast, key=lambda k: -abs(result.value[k]))
    top = by_size[:top_k]
    rest = by_size[top_k:]
    extra = sorted(rng.choice(rest, min(n_random, len(rest)), replace=False).tolist()) if rest else []
    picked = top + extra
    if result.all_donors:
        pairs = draw_pairs(m, n_pairs, result.strata, seed)
    else:
        pairs = result.pairs
    nodes = [result.nodes[k] for k in picked]
    empty = np.zeros(0)
    if not nodes:
        return Confirmation(nodes=[], estimate=empty, exact=empty, exact_se=empty, selected=[], methods=[],
                            pairs=pairs, exact_effects=np.zeros((len(pairs), 0)),
                            estimate_effects=None if result.all_donors else np.zeros((len(pairs), 0)),
                            checked=result.tag, stratified=result.stratified,
                            n_exact_nodes=len(methods) - len(fast))
    t0 = time.perf_counter()
    exact: ResampleResult = resample(model, prompts, nodes, outcome, method="exact", pairs=pairs,
                                     batch_size=batch_size, tokenizer=tokenizer, progress=progress,
                                     prefix_cache=prefix_cache)
    seconds = time.perf_counter() - t0
    return Confirmation(
        nodes=nodes, estimate=result.value[picked], exact=exact.value, exact_se=exact.se,
        selected=["top"] * len(top) + ["random"] * len(extra), methods=[methods[k] for k in picked],
        pairs=pairs, exact_effects=exact.effects,
        estimate_effects=None if result.all_donors else result.effects[:, picked],
        checked=result.tag, stratified=result.stratified, n_exact_nodes=len(methods) - len(fast), seconds=seconds)
