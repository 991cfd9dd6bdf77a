"""Ablation: run prompts with a set of nodes replaced, all at once.

Where patching swaps one node between two runs, ablation removes what a set
of nodes carries about the prompt by overwriting them with a value that does
not depend on it:

- ``how="zero"``: 0 (Olah et al. 2018; the bluntest choice).
- ``how="mean"``: the node's mean over reference prompts at its position
  (Wang et al. 2023, the IOI circuit's mean ablation).
- ``how="resample"``: the node's value under another prompt, the same donor
  for every node of the set (Chan et al. 2022, causal scrubbing).

Every node of the set is replaced at once, in every prompt: one patched row
per prompt (:mod:`~.rows`), next to an unablated copy of the same prompt in
the same forward pass, so an ablation that changes nothing gives an effect of
exactly 0 whatever the batch shape. Positions align from the end of each
prompt (as in :func:`~confounded_patching.activations.capturing.collect`), so
prompts of different lengths work.

Example::

    >>> res = ablate(model, prompts, [Head(9, 6), Head(9, 9), MLP(10)], logit_diff(" he", " she"))
    >>> res.effect.shape, res.mean_effect          # (n_prompts,), float
    >>> curve = ablation_curve(model, prompts, ranking, metric, ks=(1, 5, 10))
    >>> {k: r.mean_effect for k, r in curve.items()}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..activations.captured import Activations
from ..activations.capturing import check_nodes, check_prompts, collect
from ..errors import InputError, describe
from ..metrics import as_metric
from ..models import adapt
from ..models.tokens import pad_id
from ..nodes import Node
from ..progress import progress_bar
from ..results import Result, check_array, check_nodes_field
from ..validation import check_bool, check_choice, check_int, check_positions
from .rows import Row, run_rows

__all__ = ["ablate", "ablation_curve", "AblationResult", "HOW"]

HOW = ("mean", "resample", "zero")


@dataclass(frozen=True)
class AblationResult(Result):
    """Outcome of each prompt with a set of nodes replaced.

    Attributes:
        nodes: the nodes replaced together, in the order given.
        how: ``"mean"``, ``"resample"`` or ``"zero"``.
        values: outcome with the nodes replaced ``[n_prompts]``.
        baseline: outcome of the unablated prompt, from the same forward pass ``[n_prompts]``.
        outcome: the outcome metric's name.
        donors: for ``how="resample"``, the index (into the reference prompts)
            of the prompt whose values prompt ``i`` received ``[n_prompts]``;
            otherwise None.
    """

    nodes: list
    how: str
    values: np.ndarray
    baseline: np.ndarray
    outcome: str
    donors: np.ndarray | None = None

    def _check(self) -> None:
        """Shapes agree: ``values``, ``baseline`` and ``donors`` are ``[n_prompts]`` (run by ``load``)."""
        check_nodes_field("nodes", self.nodes)
        (n,) = check_array("values", self.values, (None,))
        check_array("baseline", self.baseline, (n,))
        check_array("donors", self.donors, (n,), optional=True, integer=True)
        if self.how not in HOW:
            raise InputError(f"field how must be one of {HOW}; received {self.how!r}")

    @property
    def effect(self) -> np.ndarray:
        """Ablated − unablated outcome per prompt ``[n_prompts]``."""
        return self.values - self.baseline

    @property
    def mean_effect(self) -> float:
        """Mean effect over prompts."""
        return float(self.effect.mean())

    @property
    def se(self) -> float:
        """Standard error of the mean effect (prompts as independent draws; NaN for one prompt)."""
        n = len(self.effect)
        return float(self.effect.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    def to_dataframe(self):
        """One row per prompt: ``prompt, value, baseline, effect, donor, how, n_nodes, metric``."""
        import pandas as pd

        return pd.DataFrame([{"prompt": i, "value": float(v), "baseline": float(b), "effect": float(v - b),
                              "donor": None if self.donors is None else int(self.donors[i]),
                              "how": self.how, "n_nodes": len(self.nodes), "metric": self.outcome}
                             for i, (v, b) in enumerate(zip(self.values, self.baseline))])


def _check_nodes(adapter, nodes, how, argument="nodes") -> list[Node]:
    if isinstance(nodes, (str, bytes)) or not hasattr(nodes, "__iter__"):
        raise InputError(f"{argument} must be a list of nodes (MLP, Head, Resid); received {describe(nodes)}")
    nodes = list(nodes)
    if not nodes:
        return nodes  # nothing replaced: the effect is exactly 0
    if how != "zero":
        for i, node in enumerate(nodes):
            if getattr(node, "pos", 0) is None:
                raise InputError(f"{argument}[{i}] = {node!r}: how={how!r} needs an integer position (the value is "
                                 "read at that position of the reference prompts); received pos=None. Only "
                                 "how='zero' accepts pos=None (every position)")
    return check_nodes(adapter, nodes, argument=argument, allow_all_positions=True)


def _prepare(adapter, prompts, id_lists, nodes, how, reference, seed, batch_size, remote):
    """Per node, a function ``rows -> values [len(rows), d]`` (or a 0-dim zero), and the donors."""
    if how == "zero":
        if reference is not None:
            raise InputError(f"reference is used by how='mean' and how='resample' only; how='zero' received "
                             f"reference={describe(reference)}")
        zero = torch.zeros(())
        return {n: (lambda rows: zero) for n in nodes}, None
    if isinstance(reference, Activations):  # values already collected: no forward pass needed
        missing = [n for n in nodes if n not in reference]
        if missing:
            raise InputError(f"reference: the activations do not hold {len(missing)} of the nodes, e.g. "
                             f"{missing[0]!r}; collect them with cp.collect(model, prompts, nodes)")
        _check_reference_values(adapter, reference, nodes)
        if how == "mean":
            return {n: (lambda rows, m=reference[n].double().mean(0).float(): m.expand(len(rows), -1))
                    for n in nodes}, None
        donors = np.random.default_rng(seed).integers(0, len(reference), len(id_lists))
        return {n: (lambda rows, v=reference[n]: v[[int(donors[i]) for i in rows]]) for n in nodes}, donors
    same = reference is None or reference is prompts
    ref_ids = id_lists if same else check_prompts(adapter, reference, argument="reference")
    check_positions(ref_ids, nodes, argument="reference")
    if how == "resample":
        rng = np.random.default_rng(seed)
        n = len(ref_ids)
        if same:
            if n < 2:
                raise InputError(f"how='resample' without a reference draws each prompt's donor from the other "
                                 f"prompts, so prompts must hold at least 2 prompts; received {n}")
            donors = (np.arange(len(id_lists)) + rng.integers(1, n, len(id_lists))) % n
        else:
            donors = rng.integers(0, n, len(id_lists))
        used = np.unique(donors)  # read only the donors' values
        if not nodes:
            return {}, donors
        acts = _collect(adapter, [ref_ids[j] for j in used], nodes, batch_size, remote)
        where = {int(j): k for k, j in enumerate(used)}
        return {node: (lambda rows, v=acts[node]: v[[where[int(donors[i])] for i in rows]]) for node in nodes}, donors
    if not nodes:
        return {}, None
    acts = _collect(adapter, ref_ids, nodes, batch_size, remote)
    means = {node: acts[node].double().mean(0).float() for node in nodes}
    return {node: (lambda rows, m=means[node]: m.expand(len(rows), -1)) for node in nodes}, None


def _check_reference_values(adapter, reference: Activations, nodes) -> None:
    """Collected reference values must have this model's width at each node and be finite."""
    for node in nodes:
        value = reference[node]
        width = adapter.spec.node_dim(node.kind)
        if value.ndim != 2 or value.shape[1] != width or value.shape[0] == 0:
            raise InputError(f"reference: the activations of {node!r} must be [n_prompts >= 1, {width}] for this "
                             f"model ({node.kind} width {width}); received {describe(value)} (collected with "
                             "another model?)")
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"reference: the activations of {node!r} hold NaN or inf; they would be written into "
                             "every ablated run")


def _collect(adapter, id_lists, nodes, batch_size, remote):
    return collect(adapter, id_lists, nodes, batch_size=batch_size, progress=False, remote=remote)


def _run(adapter, id_lists, nodes, fill, outcome, batch_size, progress, remote, desc):
    """Ablated and unablated rows of each chunk in one forward; returns (values, baseline)."""
    n = len(id_lists)
    values, baseline = np.zeros(n), np.zeros(n)
    fill_id = pad_id(adapter.tokenizer)
    order = np.argsort([len(ids) for ids in id_lists], kind="stable")  # similar lengths, less padding
    for start in progress_bar(range(0, n, batch_size), progress, desc=desc, unit="batch"):
        chunk = [int(i) for i in order[start:start + batch_size]]
        # nothing to replace: no ablated rows, the unablated ones are the result
        rows = [Row(i, tuple(nodes)) for i in chunk] if nodes else []
        out = run_rows(adapter, id_lists, rows, lambda node, js: fill[node]([chunk[j] for j in js]), outcome,
                       fill_id=fill_id, base=chunk, reference="unpatched", argument="outcome", remote=remote)
        baseline[chunk] = out.base
        values[chunk] = out.values if nodes else out.base
    return values, baseline


def _check_common(adapter, prompts, outcome, how, batch_size, seed):
    check_choice("how", how, HOW)
    check_int("batch_size", batch_size, minimum=1, expected="an int >= 1")
    check_int("seed", seed, minimum=0, expected="an int >= 0")
    outcome = as_metric(outcome, adapter.tokenizer, argument="outcome", vocab_size=adapter.spec.vocab_size)
    id_lists = check_prompts(adapter, prompts)
    return outcome, id_lists


def ablate(
    model,
    prompts,
    nodes: Sequence[Node],
    outcome,
    *,
    how: str = "mean",
    reference=None,
    seed: int = 0,
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
) -> AblationResult:
    """Run every prompt with all of ``nodes`` replaced at once.

    Args:
        model: nnsight, TransformerLens or HF model (with ``tokenizer``).
        prompts: strings, LongTensor ``[n, seq]`` or id lists (lengths may differ).
        nodes: the nodes to replace together; an empty list replaces nothing
            (effect exactly 0). Positions count from the end when negative;
            ``pos=None`` (every position) only with ``how="zero"``.
        outcome: metric on last-position logits ``[batch, vocab] -> [batch]``
            (e.g. ``cp.metrics.logit_diff(" he", " she")``), a per-prompt
            metric from ``cp.datasets`` (rows aligned with ``prompts``), a
            ``full_logits`` metric, or ``kl_to_clean()`` (KL of the unablated
            run's next-token distribution to the ablated run's).
        how: ``"mean"`` (mean over ``reference`` at the node's position),
            ``"resample"`` (values of one donor prompt of ``reference`` per
            prompt, the same donor for every node) or ``"zero"``.
        reference: prompts that supply the values (default: ``prompts``), or
            an :class:`~confounded_patching.activations.captured.Activations` from
            :func:`~confounded_patching.activations.capturing.collect`
            holding the nodes (no extra forward pass).
            With the default, resample donors satisfy ``j ≠ i``; an explicit
            reference is drawn from uniformly. Not accepted by ``"zero"``.
        seed: seed of the donor draw (``"resample"``).
        batch_size: ablated rows per forward pass; each comes with its
            unablated copy, so a forward holds up to ``2 × batch_size`` rows.
        remote: passed to nnsight's ``trace``.

    Returns:
        :class:`AblationResult`: ``values``, ``baseline`` and ``effect`` per prompt.

    Example::

        >>> res = ablate(model, ["w1 w2 w3", "w4 w5"], [Head(1, 0), MLP(0, -2)], logit(" w1"), how="zero")
        >>> res.values.shape, res.effect.shape
        ((2,), (2,))
    """
    adapter = adapt(model, tokenizer)
    outcome, id_lists = _check_common(adapter, prompts, outcome, how, batch_size, seed)
    check_bool("progress", progress)
    nodes = _check_nodes(adapter, nodes, how)
    check_positions(id_lists, nodes, argument="prompts")
    fill, donors = _prepare(adapter, prompts, id_lists, nodes, how, reference, seed, batch_size, remote)
    values, baseline = _run(adapter, id_lists, nodes, fill, outcome, batch_size, progress, remote, f"ablate ({how})")
    return AblationResult(nodes=nodes, how=how, values=values, baseline=baseline, outcome=outcome.name,
                          donors=donors)


def ablation_curve(
    model,
    prompts,
    ranked_nodes: Sequence[Node],
    outcome,
    ks: Sequence[int] = (1, 5, 10, 20),
    *,
    how: str = "mean",
    reference=None,
    seed: int = 0,
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
) -> dict[int, AblationResult]:
    """Ablate the top ``k`` nodes of a ranking, for each ``k`` in ``ks``.

    The values are read once for the largest ``k``; with ``how="resample"``
    every ``k`` uses the same donors. Arguments as in :func:`ablate`.

    Returns:
        ``{k: AblationResult}`` in the order of ``ks`` (duplicates dropped).

    Example::

        >>> curve = ablation_curve(model, prompts, ranking, metric, ks=(1, 5, 10))
        >>> [round(curve[k].mean_effect, 2) for k in curve]
    """
    adapter = adapt(model, tokenizer)
    outcome, id_lists = _check_common(adapter, prompts, outcome, how, batch_size, seed)
    check_bool("progress", progress)
    ranked = _check_nodes(adapter, ranked_nodes, how, argument="ranked_nodes")
    if isinstance(ks, (int, np.integer)) or not hasattr(ks, "__iter__"):
        raise InputError(f"ks must be a sequence of ints; received {describe(ks)}")
    ks = list(dict.fromkeys(ks))
    if not ks:
        raise InputError("ks must name at least one k; received an empty sequence")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= len(ranked):
            raise InputError(f"ks must hold ints in [0, {len(ranked)}] (the number of ranked_nodes); received "
                             f"{describe(k)}")
    top = ranked[:max(ks)]
    check_positions(id_lists, top, argument="prompts")
    fill, donors = _prepare(adapter, prompts, id_lists, top, how, reference, seed, batch_size, remote)
    out = {}
    for k in ks:
        values, baseline = _run(adapter, id_lists, top[:k], fill, outcome, batch_size, progress, remote,
                                f"ablate top {k} ({how})")
        out[int(k)] = AblationResult(nodes=top[:k], how=how, values=values, baseline=baseline,
                                     outcome=outcome.name, donors=donors)
    return out
