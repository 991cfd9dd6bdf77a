"""The resample ("interventional") average indirect effect: exactly, to first order, or both.

For ordered pairs ``(i, j)`` of prompts, run prompt ``i`` with the node set
to its value under prompt ``j``; the AIE of the node is the mean of
``y(i, n←n_j) − y(i)`` over pairs (the paper's Eq. 1, computed by
intervention). With ``strata`` (topics), ``j`` is drawn from ``i``'s
stratum, so the topic cannot carry the effect: the AIE is deconfounded by
design. Three ways to compute it, the same pairs and the same result type:

- ``method="exact"``: one patched row per pair and node (:mod:`~.rows`,
  each row next to the unpatched prompt ``i`` in the same forward pass);
  the ground truth.
- ``method="attribution"``: the first-order term
  ``y(i, n←n_j) − y(i) ≈ g_i · (n_j − n_i)``, with ``g_i = ∂y_i/∂n`` in
  prompt ``i``'s own run (:mod:`~.gradients`): one forward and one backward
  pass per prompt score every node. ``n_pairs="all"`` uses every donor of
  the pool (all prompts, or ``i``'s stratum): the effect of prompt ``i`` is
  ``g_i · (n̄_pool∖i − n_i)``, the mean over all its donors at no extra cost.
- ``method="auto"``: first order where it is accurate, exact elsewhere, by
  node kind (:data:`AUTO`, measured against exact on SmolLM2 in
  ``docs/evidence.md``); ``ResampleResult.methods`` records which was used.

The first-order term is exact for outcomes linear in the node, and
accurate when swapping the node's value moves the rest of the network
little (attention heads); swapping a whole residual-stream vector or a
large MLP output is far from linear, so ``auto`` computes those exactly.
:func:`~.confirm.confirm` checks a result's top nodes against exact.

Example::

    >>> res = resample(model, prompts, nodes, cp.metrics.logit_diff(" he", " she"), n_pairs=200,
    ...                strata=topics, method="auto")
    >>> res.value, res.se, res.methods              # [n_nodes] each
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..activations.capturing import check_nodes, check_prompts
from ..errors import InputError, describe
from ..metrics import as_metric
from ..models import adapt
from ..models.tokens import pad_id
from ..nodes import Node
from ..progress import progress_counter
from ..results import Result, check_array, check_nodes_field, node_columns, resample_tag
from ..validation import check_bool, check_choice, check_int, check_positions
from .gradients import node_gradients
from .rows import PrefixCache, Row, run_rows

__all__ = ["resample", "draw_pairs", "check_pairs", "strata_codes", "ResampleResult", "METHODS", "AUTO"]

METHODS = ("exact", "attribution", "auto")
#: ``method="auto"``: how each node kind is computed. Measured on SmolLM2 against exact resample on the
#: same pairs (docs/evidence.md): heads' first-order terms agree with exact (Spearman of |value| 0.89-0.99,
#: per-pair Spearman 0.97-1.00 on four datasets); MLP outputs and residual-stream vectors are too far from linear, and few (one per
#: layer and position), so they are computed exactly.
AUTO = {"head": "attribution", "mlp": "exact", "resid": "exact"}


@dataclass(frozen=True)
class ResampleResult(Result):
    """Resample (interventional) AIE per node.

    Attributes:
        nodes: the nodes.
        effects: ``y(i, n←n_j) − y(i)`` per pair and node ``[n_pairs, n_nodes]``; with all donors, per
            recipient prompt ``i`` and node, the mean over its donors.
        pairs: the (i, j) prompt indices ``[n_pairs, 2]``, shared by every node; ``j = -1`` means every
            donor of ``i``'s pool (``n_pairs="all"``).
        baseline: ``y(i)`` per prompt ``[n_prompts]`` (NaN for a prompt in no pair: it was not run).
        outcome: the outcome metric's name.
        stratified: True if j was drawn from i's stratum.
        methods: how each node's effects were computed, ``"exact"`` or ``"attribution"`` (first order).
        strata: the stratum of each prompt as integer codes ``[n_prompts]`` (None: one pool).
        seconds: wall time of each computation (``{"exact": s, "attribution": s}``).
    """

    nodes: list
    effects: np.ndarray
    pairs: np.ndarray
    baseline: np.ndarray
    outcome: str
    stratified: bool = False
    methods: list | None = None
    strata: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)

    def _check(self) -> None:
        """Shapes agree: ``effects`` ``[n_pairs, n_nodes]``, ``pairs`` ``[n_pairs, 2]`` indexing ``baseline`` (run by ``load``)."""
        k = check_nodes_field("nodes", self.nodes)
        (m,) = check_array("baseline", self.baseline, (None,))
        p, _ = check_array("effects", self.effects, (None, k))
        check_array("pairs", self.pairs, (p, 2), integer=True)
        check_array("strata", self.strata, (m,), optional=True, integer=True)
        if p and (self.pairs[:, 0].min() < 0 or self.pairs.max() >= m or self.pairs[:, 1].min() < -1):
            raise InputError(f"field 'pairs' must index the {m} prompts of baseline; received indices from "
                             f"{self.pairs.min()} to {self.pairs.max()}")
        if self.methods is not None and (len(self.methods) != k or not set(self.methods) <= {"exact", "attribution"}):
            raise InputError(f"field 'methods' must name 'exact' or 'attribution' for each of the {k} nodes; "
                             f"received {describe(self.methods)}")

    @property
    def value(self) -> np.ndarray:
        """AIE per node: mean effect over pairs ``[n_nodes]``."""
        return self.effects.mean(0)

    @property
    def se(self) -> np.ndarray:
        """Standard error of the AIE per node (pairs, or recipients with all donors, as independent draws)."""
        n = self.effects.shape[0]
        return self.effects.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(self.nodes), np.nan)

    @property
    def node_methods(self) -> list:
        """How each node was computed (``"exact"`` for results of earlier releases)."""
        return list(self.methods) if self.methods is not None else ["exact"] * len(self.nodes)

    @property
    def method(self) -> str:
        """``"exact"``, ``"attribution"`` (every node first order) or ``"auto"`` (a mix)."""
        used = set(self.node_methods)
        return used.pop() if len(used) == 1 else "auto"

    @property
    def all_donors(self) -> bool:
        """Whether each row averages over every donor of its pool (``n_pairs="all"``)."""
        return bool(len(self.pairs)) and bool((self.pairs[:, 1] == -1).all())

    @property
    def tag(self) -> str:
        """The long-form ``method`` tag (:func:`~confounded_patching.results.resample_tag`)."""
        return resample_tag(self.stratified, self.method)

    def to_dataframe(self):
        import pandas as pd

        n_pairs = int(self.effects.shape[0])
        return pd.DataFrame([{**node_columns(n), "method": self.tag, "value": float(v), "se": float(s),
                              "n_pairs": n_pairs, "metric": self.outcome, "computed": how,
                              "exact": how == "exact"}
                             for n, v, s, how in zip(self.nodes, self.value, self.se, self.node_methods)])


# ----------------------------------------------------------------------------- pairs and strata


def strata_codes(strata, n_prompts: int, *, argument: str = "strata") -> np.ndarray:
    """Integer codes ``[n_prompts]`` of the strata labels (any hashable labels; NaN and None refused)."""
    if isinstance(strata, (str, bytes)):
        raise InputError(f"{argument} must hold one label per prompt ({n_prompts}); received {describe(strata)}")
    try:
        labels = list(strata)
    except TypeError:
        raise InputError(f"{argument} must hold one label per prompt ({n_prompts}); received "
                         f"{describe(strata)}") from None
    if len(labels) != n_prompts:
        raise InputError(f"{argument} must have one label per prompt ({n_prompts}); received {len(labels)} labels")
    bad = [i for i, s in enumerate(labels) if s is None or (isinstance(s, float) and s != s)]
    if bad:
        raise InputError(f"{argument} must label every prompt; prompt {bad[0]} has {labels[bad[0]]!r} "
                         f"({len(bad)} prompt(s) unlabelled)")
    try:
        codes = {s: c for c, s in enumerate(dict.fromkeys(labels))}
    except TypeError:
        raise InputError(f"{argument} labels must be hashable (str, int ...); received "
                         f"{describe(labels[0])}") from None
    return np.asarray([codes[s] for s in labels], dtype=np.int64)


def _pools(codes: np.ndarray | None, n_prompts: int, *, warn: bool = True) -> list[np.ndarray]:
    """The donor pools (prompts of one stratum, or all) with at least 2 prompts; warns about singletons."""
    if codes is None:
        return [np.arange(n_prompts)]
    pools = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    alone = [int(p[0]) for p in pools if len(p) < 2]
    kept = [p for p in pools if len(p) > 1]
    if not kept:
        raise InputError("strata: every stratum has a single prompt, so no within-stratum pair exists")
    if alone and warn:
        warnings.warn(f"strata: {len(alone)} stratum(s) hold a single prompt (prompt(s) {alone[:5]}), which has "
                      "no donor in its stratum; those prompts are left out of the pairs", UserWarning, stacklevel=3)
    return kept


def draw_pairs(n_prompts: int, n_pairs: int, strata=None, seed: int = 0) -> np.ndarray:
    """``n_pairs`` random ordered pairs (i, j), j ≠ i; with ``strata``, j shares i's stratum.

    ``i`` is uniform over the prompts that have a donor (a prompt alone in its stratum has none: it is left
    out, with a warning), ``j`` uniform over ``i``'s other pool members.
    """
    check_int("n_pairs", n_pairs, minimum=1, expected="a positive int or 'all'")
    rng = np.random.default_rng(seed)
    codes = None if strata is None else strata_codes(strata, n_prompts)
    if codes is None:
        if n_prompts < 2:
            raise InputError(f"need at least 2 prompts to form pairs; received {n_prompts}")
        i = rng.integers(0, n_prompts, n_pairs)
        j = (i + rng.integers(1, n_prompts, n_pairs)) % n_prompts
        return np.stack([i, j], 1)
    pools = _pools(codes, n_prompts)
    member = {int(a): pool for pool in pools for a in pool}
    i = rng.choice(np.concatenate(pools), n_pairs)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for k, a in enumerate(i):
        pool = member[int(a)]
        b = pool[rng.integers(0, len(pool) - 1)]
        out[k] = (a, b if b != a else pool[-1])
    return out


def check_pairs(pairs, n_prompts: int, strata: np.ndarray | None = None, *, argument: str = "pairs") -> np.ndarray:
    """``pairs`` as an int64 array ``[n, 2]`` of distinct prompt indices in ``[0, n_prompts)``.

    With ``strata`` codes, each pair must lie within one stratum.
    """
    arr = np.asarray(pairs)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError(f"{argument} must be integer prompt indices of shape [n_pairs, 2]; received {describe(pairs)}")
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise InputError(f"{argument} must have shape [n_pairs, 2] with n_pairs >= 1; received {describe(pairs)}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0).any(1) | (arr >= n_prompts).any(1))
    if len(bad):
        raise InputError(f"{argument}[{bad[0]}] = {arr[bad[0]].tolist()}: prompt indices must lie in "
                         f"[0, {n_prompts - 1}] (negative indices are not counted from the end)")
    same = np.flatnonzero(arr[:, 0] == arr[:, 1])
    if len(same):
        raise InputError(f"{argument}[{same[0]}] = {arr[same[0]].tolist()}: a prompt cannot be its own donor "
                         "(i == j gives effect 0)")
    if strata is not None:
        cross = np.flatnonzero(strata[arr[:, 0]] != strata[arr[:, 1]])
        if len(cross):
            raise InputError(f"{argument}[{cross[0]}] = {arr[cross[0]].tolist()} crosses strata; with strata= "
                             "every donor must share its prompt's stratum")
    return arr


# ----------------------------------------------------------------------------- the estimator


def resample(
    model,
    prompts,
    nodes: Sequence[Node],
    outcome,
    *,
    method: str = "exact",
    n_pairs: int | str = 200,
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
    ``y(i, n←n_j) − y(i)``; the AIE of n is its mean over pairs. The same
    pairs serve every node. Positions align from the end of each prompt, so
    prompts of different lengths pair up; nodes with ``pos=None`` (every
    position) need prompts of one token length.

    Args:
        model: nnsight, TransformerLens or HF model (with ``tokenizer``).
        prompts: strings, a LongTensor ``[n, seq]`` or lists of token ids.
        nodes: the nodes to score.
        outcome: a metric on the logits (``cp.metrics.logit_diff(" he", " she")``, a per-prompt
            ``answer_logit_diff``, or a callable ``logits [batch, vocab] -> [batch]``).
        method: ``"exact"`` (one patched row per pair and node), ``"attribution"`` (first order, one
            forward and backward pass per prompt) or ``"auto"`` (by node kind, :data:`AUTO`).
        n_pairs: random pairs to draw, or ``"all"`` (``method="attribution"`` only): every donor of each
            prompt's pool.
        strata: one label per prompt; donors are drawn from the prompt's own stratum (a prompt alone in
            its stratum has no donor and is left out, with a warning).
        seed: seed of the pair draw.
        pairs: explicit ``[n_pairs, 2]`` prompt indices (i, j) instead of a draw.
        batch_size: rows per forward pass.
        prefix_cache: exact rows start at their node's layer from prompt i's cached residual stream.
        remote: passed to nnsight's ``trace`` (exact method only).

    Returns:
        :class:`ResampleResult` (``value``, ``se`` and ``methods`` per node).
    """
    check_choice("method", method, METHODS)
    adapter = adapt(model, tokenizer)
    nodes = check_nodes(adapter, nodes, allow_all_positions=True)
    metric = _outcome_metric(outcome, adapter)
    id_lists = check_prompts(adapter, prompts)  # ids in the vocabulary, lengths within the context
    m = len(id_lists)
    if m < 2:
        raise InputError(f"prompts must hold at least 2 prompts to form pairs; received {m}")
    check_int("batch_size", batch_size, minimum=1, expected="a positive int")
    check_int("seed", seed, minimum=0, expected="an int >= 0")
    check_bool("progress", progress)
    check_positions(id_lists, nodes)
    if any(n.pos is None for n in nodes) and len({len(ids) for ids in id_lists}) > 1:
        raise InputError("nodes with pos=None swap every position, so every prompt must have the same token "
                         f"length; received lengths {sorted({len(ids) for ids in id_lists})[:6]}. Give integer "
                         "positions (aligned from each prompt's end) or prompts of one length")
    codes = None if strata is None else strata_codes(strata, m)
    how = [method if method != "auto" else AUTO[n.kind] for n in nodes]
    if isinstance(n_pairs, str):
        if n_pairs != "all":
            raise InputError(f"n_pairs must be a positive int or 'all'; received {n_pairs!r}")
        if pairs is not None:
            raise InputError("give either pairs=... or n_pairs='all', not both")
        if method != "attribution":
            raise InputError(f"n_pairs='all' (every donor of each prompt) is computed to first order only: use "
                             f"method='attribution'; method={method!r} needs a number of pairs")
        return _all_donors(adapter, id_lists, nodes, metric, codes, batch_size=batch_size, progress=progress)
    if pairs is None:
        pairs = draw_pairs(m, n_pairs, codes, seed)
    else:
        pairs = check_pairs(pairs, m, codes)
    seconds = {}
    t0 = time.perf_counter()
    attr = [n for n, h in zip(nodes, how) if h == "attribution"]
    vg = node_gradients(adapter, id_lists, nodes, metric, grad_nodes=attr,
                        grad_prompts=np.unique(pairs[:, 0]) if attr else (), value_prompts=np.unique(pairs),
                        batch_size=batch_size, progress=progress, remote=remote)
    effects = np.zeros((len(pairs), len(nodes)))
    for k, (node, h) in enumerate(zip(nodes, how)):
        if h == "attribution":
            effects[:, k] = _first_order(vg.grads[node], vg.values[node], pairs[:, 0], pairs[:, 1])
    seconds["attribution" if attr else "capture"] = time.perf_counter() - t0
    exact = [k for k, h in enumerate(how) if h == "exact"]
    if exact:
        t0 = time.perf_counter()
        use_cache = prefix_cache and remote is None and adapter.can_start()
        sub = [nodes[k] for k in exact]
        effects[:, exact] = _patched_effects(adapter, id_lists, sub, pairs, {n: vg.values[n] for n in sub}, metric,
                                             batch_size=batch_size, progress=progress, remote=remote,
                                             prefix_cache=use_cache)
        seconds["exact"] = time.perf_counter() - t0
    return ResampleResult(nodes=nodes, effects=effects, pairs=pairs, baseline=vg.outcome, outcome=metric.name,
                          stratified=codes is not None, methods=how, strata=codes, seconds=seconds)


def _outcome_metric(outcome, adapter):
    """The bound outcome metric; labels and clean-run metrics are refused with the reason."""
    if isinstance(outcome, (list, tuple, np.ndarray)) or (hasattr(outcome, "shape") and not callable(outcome)):
        raise InputError(
            f"outcome must be a metric of the logits (e.g. cp.metrics.logit_diff(' he', ' she')), which the "
            f"intervention can move; received {describe(outcome)}. Fixed labels (of sampled generations) do not "
            f"respond to patching a node: use cp.mediate for labels, or a differentiable metric here")
    metric = as_metric(outcome, adapter.tokenizer, argument="outcome")
    if metric.needs_clean:
        raise InputError(f"outcome {metric.name!r} compares with a clean run; resample has none")
    return metric


def _first_order(grads, values, recipients, donors) -> np.ndarray:
    """``g_i · (n_j − n_i)`` per pair ``[n_pairs]`` (float64 sums)."""
    g = grads[recipients].double()
    delta = values[donors].double() - values[recipients].double()
    return (g * delta).flatten(1).sum(1).numpy()


def _all_donors(adapter, id_lists, nodes, metric, codes, *, batch_size: int, progress: bool) -> ResampleResult:
    """First-order effect of every prompt against the mean of all its donors: ``g_i · (n̄_pool∖i − n_i)``."""
    m = len(id_lists)
    t0 = time.perf_counter()
    pools = _pools(codes, m)
    recipients = np.sort(np.concatenate(pools))
    vg = node_gradients(adapter, id_lists, nodes, metric, grad_nodes=nodes, grad_prompts=recipients,
                        value_prompts=range(m), batch_size=batch_size, progress=progress)
    effects = np.zeros((len(recipients), len(nodes)))
    where = {int(i): r for r, i in enumerate(recipients)}
    for k, node in enumerate(nodes):
        v, g = vg.values[node].double(), vg.grads[node].double()
        for pool in pools:
            total = v[pool].sum(0)
            others = (total[None] - v[pool]) / (len(pool) - 1)  # mean over the donors j ≠ i of each i
            rows = [where[int(i)] for i in pool]
            effects[rows, k] = (g[pool] * (others - v[pool])).flatten(1).sum(1).numpy()
    pairs = np.stack([recipients, np.full(len(recipients), -1)], 1).astype(np.int64)
    return ResampleResult(nodes=nodes, effects=effects, pairs=pairs, baseline=vg.outcome, outcome=metric.name,
                          stratified=codes is not None, methods=["attribution"] * len(nodes), strata=codes,
                          seconds={"attribution": time.perf_counter() - t0})


def _patched_effects(adapter, id_lists, nodes, pairs, values: dict, outcome, *, batch_size: int, progress: bool,
                     remote, prefix_cache: bool) -> np.ndarray:
    """``y(i with n←n(j)) − y(i)`` ``[n_pairs, n_nodes]``, one patched row per pair and node.

    ``values[node]`` holds every prompt's value of the node ``[n_prompts, d]`` (``[n_prompts, seq, d]``
    for ``pos=None``).
    """
    fill_id = pad_id(adapter.tokenizer)
    layers = sorted({n.layer for n in nodes if n.layer > 0}) if prefix_cache else []
    order = np.argsort([len(id_lists[i]) for i in pairs[:, 0]], kind="stable")
    effects = np.zeros((len(pairs), len(nodes)))
    # blocks of pairs (in length order): their prompts' residual streams are cached for the block only
    block = max(1, 4 * batch_size // max(1, len(nodes)))
    n_batches = sum(-(-len(order[b:b + block]) * len(nodes) // batch_size) for b in range(0, len(order), block))
    bar = progress_counter(n_batches, progress, desc="resample (exact)", unit="batch")
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
