"""The resample ("interventional") average indirect effect, by brute force.

For random ordered pairs ``(i, j)`` of prompts, run prompt ``i`` with the
node set to its value under prompt ``j``; the AIE of the node is the mean of
``y(i with n←n(j)) − y(i)`` over pairs. This is the causal quantity the
EB-AIE estimator (:mod:`~confounded_patching.estimation`) targets, computed
exactly at the cost of one patched row per pair and node
(:mod:`~.rows`: each row next to the unpatched prompt ``i`` in the same
forward pass).

Example::

    >>> res = resample(model, prompts, nodes, cp.metrics.logit_diff(" he", " she"), n_pairs=200)
    >>> res.value, res.se                          # [n_nodes] each
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..activations.capturing import check_nodes, collect
from ..errors import InputError, describe
from ..metrics import as_metric
from ..models import adapt
from ..models.tokens import as_id_lists, pad_id
from ..nodes import Node
from ..progress import progress_counter
from ..results import Result, check_array, check_nodes_field, node_columns, resample_tag
from ..validation import check_int
from .rows import PrefixCache, Row, run_rows

__all__ = ["resample", "draw_pairs", "ResampleResult"]


@dataclass(frozen=True)
class ResampleResult(Result):
    """Resample (interventional) AIE per node.

    Attributes:
        nodes: the nodes.
        effects: ``y(i with n←n(j)) − y(i)`` per pair and node ``[n_pairs, n_nodes]``.
        pairs: the (i, j) prompt indices ``[n_pairs, 2]``, shared by every node.
        baseline: ``y(i)`` per prompt ``[n_prompts]``.
        outcome: the outcome metric's name.
        stratified: True if j was drawn from i's stratum.
    """

    nodes: list
    effects: np.ndarray
    pairs: np.ndarray
    baseline: np.ndarray
    outcome: str
    stratified: bool = False

    def _check(self) -> None:
        """Shapes agree: ``effects`` ``[n_pairs, n_nodes]``, ``pairs`` ``[n_pairs, 2]`` indexing ``baseline`` (run by ``load``)."""
        k = check_nodes_field("nodes", self.nodes)
        (m,) = check_array("baseline", self.baseline, (None,))
        p, _ = check_array("effects", self.effects, (None, k))
        check_array("pairs", self.pairs, (p, 2), integer=True)
        if p and (self.pairs.min() < 0 or self.pairs.max() >= m):
            raise InputError(f"field 'pairs' must index the {m} prompts of baseline; received indices from "
                             f"{self.pairs.min()} to {self.pairs.max()}")

    @property
    def value(self) -> np.ndarray:
        """AIE per node: mean effect over pairs ``[n_nodes]``."""
        return self.effects.mean(0)

    @property
    def se(self) -> np.ndarray:
        """Standard error of the AIE per node (pairs taken as independent draws)."""
        n = self.effects.shape[0]
        return self.effects.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(self.nodes), np.nan)

    def to_dataframe(self):
        import pandas as pd

        method = resample_tag(self.stratified)
        return pd.DataFrame([{**node_columns(n), "method": method, "value": float(v), "se": float(s),
                              "n_pairs": int(self.effects.shape[0]), "metric": self.outcome}
                             for n, v, s in zip(self.nodes, self.value, self.se)])


def draw_pairs(n_prompts: int, n_pairs: int, strata=None, seed: int = 0) -> np.ndarray:
    """Random ordered pairs (i, j), j ≠ i; with ``strata``, j shares i's stratum."""
    rng = np.random.default_rng(seed)
    if strata is None:
        i = rng.integers(0, n_prompts, n_pairs)
        j = (i + rng.integers(1, n_prompts, n_pairs)) % n_prompts
        return np.stack([i, j], 1)
    strata = np.asarray(strata)
    if strata.shape != (n_prompts,):
        raise InputError(f"strata must have one label per prompt ({n_prompts}); received {describe(strata)}")
    members = {s: np.flatnonzero(strata == s) for s in np.unique(strata)}
    groups = [m for m in members.values() if len(m) > 1]
    if not groups:
        raise InputError("strata: every stratum has a single prompt, so no within-stratum pair exists")
    i = rng.choice(np.concatenate(groups), n_pairs)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for k, a in enumerate(i):
        m = members[strata[a]]
        b = m[rng.integers(0, len(m) - 1)]
        out[k] = (a, b if b != a else m[-1])
    return out


def resample(
    model,
    prompts,
    nodes: Sequence[Node],
    outcome,
    *,
    n_pairs: int = 200,
    strata=None,
    seed: int = 0,
    pairs=None,
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
    prefix_cache: bool = True,
) -> ResampleResult:
    """Resample AIE: run prompt i with the node set to its value under prompt j.

    For ``n_pairs`` random ordered pairs (i, j), j ≠ i (and in i's stratum
    when ``strata`` is given), and for every node n, computes
    ``y(i with n←n(j)) − y(i)``; the AIE of n is its mean over pairs. The
    same pairs serve every node. Positions align from the end of each prompt,
    so prompts of different lengths pair up.

    ``prefix_cache`` starts each row at its node's layer from prompt i's
    cached residual stream, as in :func:`~.patching.patch`.

    Returns:
        :class:`ResampleResult` (``value`` and ``se`` per node).
    """
    adapter = adapt(model, tokenizer)
    nodes = check_nodes(adapter, nodes)
    outcome = as_metric(outcome, adapter.tokenizer, argument="outcome")
    if outcome.needs_clean:
        raise InputError(f"outcome {outcome.name!r} compares with a clean run; resample has none")
    id_lists = as_id_lists(prompts, adapter.tokenizer)
    if len(id_lists) < 2:
        raise InputError(f"prompts must hold at least 2 prompts to form pairs; received {len(id_lists)}")
    if pairs is None:
        check_int("n_pairs", n_pairs, minimum=1, expected="a positive int")
        pairs = draw_pairs(len(id_lists), n_pairs, strata, seed)
    pairs = np.asarray(pairs, dtype=np.int64)
    acts = collect(adapter, id_lists, nodes, batch_size=batch_size, metric=outcome, progress=False, remote=remote)
    use_cache = prefix_cache and remote is None and adapter.can_start()
    effects = _patched_effects(adapter, id_lists, nodes, pairs, {n: acts[n] for n in nodes}, outcome,
                               batch_size=batch_size, progress=progress, remote=remote, prefix_cache=use_cache)
    return ResampleResult(nodes=nodes, effects=effects, pairs=pairs, baseline=acts.outcome.numpy().astype(float),
                          outcome=outcome.name, stratified=strata is not None)


def _patched_effects(adapter, id_lists, nodes, pairs, values: dict, outcome, *, batch_size: int, progress: bool,
                     remote, prefix_cache: bool) -> np.ndarray:
    """``y(i with n←n(j)) − y(i)`` ``[n_pairs, n_nodes]``, one patched row per pair and node.

    ``values[node]`` holds every prompt's value of the node ``[n_prompts, d]``.
    """
    fill_id = pad_id(adapter.tokenizer)
    layers = sorted({n.layer for n in nodes if n.layer > 0}) if prefix_cache else []
    order = np.argsort([len(id_lists[i]) for i in pairs[:, 0]], kind="stable")
    effects = np.zeros((len(pairs), len(nodes)))
    # blocks of pairs (in length order): their prompts' residual streams are cached for the block only
    block = max(1, 4 * batch_size // max(1, len(nodes)))
    n_batches = sum(-(-len(order[b:b + block]) * len(nodes) // batch_size) for b in range(0, len(order), block))
    bar = progress_counter(n_batches, progress, desc="resample", unit="batch")
    for b0 in range(0, len(order), block):
        ks = [int(k) for k in order[b0:b0 + block]]
        cache = PrefixCache(layers)
        cache.compute(adapter, id_lists, [int(pairs[k, 0]) for k in ks], fill_id, remote)
        todo = sorted(((k, n) for k in ks for n in range(len(nodes))),
                      key=lambda r: (nodes[r[1]].layer, len(id_lists[pairs[r[0], 0]])))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            donors = [int(pairs[k, 1]) for k, _ in chunk]
            rows = [Row(int(pairs[k, 0]), (nodes[n],)) for k, n in chunk]
            out = run_rows(adapter, id_lists, rows, lambda node, js: values[node][[donors[j] for j in js]],
                           outcome, fill_id=fill_id, prefix=cache or None, argument="outcome", remote=remote)
            effects[[k for k, _ in chunk], [n for _, n in chunk]] = out.effects
            bar.update(1)
    bar.close()
    return effects
