"""Patched rows: prompts run with some nodes set to given values, next to their unpatched copies.

Classic patching, the resample AIE and ablation all run batches of *patched
rows* — a prompt with some of its nodes overwritten — and compare each with
the same prompt unpatched. :func:`run_rows` runs one chunk of them in one
forward pass, the same way for all three:

- an unpatched copy of each prompt of the chunk comes first in the batch
  (the *base rows*), so that a patch's effect is measured within one batch:
  a patch that changes nothing gives 0 up to that batch's rounding (often
  exactly), whatever the batch shape;
- writes are grouped per site and position ``(kind, layer, pos)``: one
  indexing operation per group (heads of a layer and position together);
- positions are aligned per row from the row's own prompt (negative: from
  its last real token), so prompts of different lengths share a batch;
- with a :class:`PrefixCache`, the forward pass starts at the chunk's first
  patched layer, from each prompt's unpatched residual stream there, instead
  of recomputing the identical earlier blocks
  (:meth:`~confounded_patching.models.adapters.Adapter.can_start`).

Example (the rows of a resample AIE: prompt ``i`` with ``node`` set to its
value under prompt ``j``)::

    >>> rows = [Row(i, (node,)) for i, node in todo]
    >>> out = run_rows(adapter, id_lists, rows, lambda node, js: values[node][donors[js]], metric, fill_id=0)
    >>> out.effects                       # [len(rows)]: patched − unpatched metric per row
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..metrics import evaluate, logits_request
from ..models.sites import Plan, Read, ReadKey, Write
from ..models.tokens import TokenBatch, columns, pad
from ..nodes import Node

__all__ = ["Row", "Forward", "run_rows", "PrefixCache"]

#: ``fill(node, js)``: the values ``node`` takes in the patched rows ``js`` (indices into the chunk's rows):
#: ``[len(js), d]``, ``[len(js), seq, d]`` for ``pos=None``, or a 0-dim tensor for one value everywhere.
Fill = Callable[[Node, list], torch.Tensor]


@dataclass(frozen=True)
class Row:
    """One patched row: prompt number ``prompt`` run with ``nodes`` overwritten."""

    prompt: int
    nodes: tuple


@dataclass(frozen=True)
class Forward:
    """The metric of one chunk's rows: ``base`` [len(base)] (unpatched), ``values`` and ``effects`` [len(rows)]."""

    base: np.ndarray
    values: np.ndarray
    effects: np.ndarray  # values − base of the row's prompt


def _plan(batch: TokenBatch, rows: Sequence[Row], fill: Fill, offset: int) -> Plan:
    """Writes of the patched rows (batch rows ``offset`` on), one per ``(kind, layer, pos)`` and node set."""
    groups: dict = defaultdict(lambda: defaultdict(list))  # (kind, layer, pos) -> node -> chunk rows
    for j, row in enumerate(rows):
        for node in row.nodes:
            groups[(node.kind, node.layer, node.pos)][node].append(j)
    plan = Plan()
    for (kind, layer, pos), members in groups.items():
        rws = torch.as_tensor([offset + j for js in members.values() for j in js])
        cols = None if pos is None else columns(batch, pos, rows=rws)
        vals = [fill(node, js) for node, js in members.items()]
        vals = vals[0] if vals[0].ndim == 0 else torch.cat(vals)
        heads = torch.as_tensor([n.head for n, js in members.items() for _ in js]) if kind == "head" else None
        plan.add_write(kind, layer, Write(rws, cols, vals, heads))
    return plan


def run_rows(adapter, id_lists, rows: Sequence[Row], fill: Fill, metric, *, fill_id: int,
             base: Sequence[int] | None = None, prefix: "PrefixCache | None" = None, reference=None,
             argument: str = "metric", remote=None) -> Forward:
    """One forward pass of ``rows`` and their prompts' unpatched copies; the metric of each row.

    Args:
        adapter: the model's adapter.
        id_lists: token ids of every prompt (rows name prompts by index here).
        rows: the patched rows; ``fill`` gives their values.
        metric: a bound metric; per-row metrics are taken at each row's prompt.
        fill_id: the padding id.
        base: the unpatched rows, in batch order (default: the rows' prompts, sorted).
        prefix: start at the first patched layer from these cached residual streams.
        reference: the logits a metric that compares with a clean run (``kl_to_clean``) gets:
            ``"unpatched"`` (each row's base row), a function ``prompts -> [n, vocab]``, or None.
        argument: the metric's argument name, for errors.
        remote: passed to the adapter (nnsight's ``remote=``).
    """
    base = sorted({r.prompt for r in rows}) if base is None else list(base)
    prompts = base + [r.prompt for r in rows]
    batch = pad([id_lists[i] for i in prompts], fill_id)
    plan = _plan(batch, rows, fill, len(base))
    begin = None
    if prefix is not None and rows:
        begin = prefix.start(min(n.layer for r in rows for n in r.nodes), prompts, batch)
    _, logits = adapter.run(batch, plan, logits=logits_request(metric), remote=remote, start=begin)
    logits = logits.float()
    where = {p: k for k, p in enumerate(base)}
    ref = None
    if metric.needs_clean:
        ref = logits[[where[p] for p in prompts]] if reference == "unpatched" else reference(prompts)
    y = evaluate(metric, logits, ref, argument=argument, rows=prompts,
                 mask=batch.attention_mask.to(logits.device)).cpu().numpy()
    values = y[len(base):]
    return Forward(y[:len(base)], values, values - y[[where[r.prompt] for r in rows]])


class PrefixCache:
    """Each prompt's unpatched residual stream (real tokens only) entering some layers.

    A patched row whose earliest patched node is at layer ``l`` computes blocks ``0..l-1`` exactly as its
    prompt's unpatched run does, so it can start at block ``l`` from the cached stream
    (:meth:`start`). Fill it from reads taken during a run the caller makes anyway (:meth:`read_plan`,
    :meth:`keep`), or by a forward pass of its own (:meth:`compute`).
    """

    def __init__(self, layers):
        self.layers = sorted(set(layers))
        self._streams: dict = {}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def read_plan(self) -> Plan:
        """Reads of the whole residual stream entering each cached layer."""
        plan = Plan()
        for layer in self.layers:
            plan.add_read(Read(ReadKey.site("resid", layer)))
        return plan

    def keep(self, reads: dict, batch: TokenBatch, prompts: Sequence[int]) -> None:
        """Store the streams read by :meth:`read_plan` on ``batch``, whose row ``r`` is prompt ``prompts[r]``."""
        first, lengths = batch.first.tolist(), batch.lengths.tolist()
        for layer in self.layers:
            stream = reads[ReadKey.site("resid", layer)]
            for r, i in enumerate(prompts):
                self._streams[(i, layer)] = stream[r, first[r]:first[r] + lengths[r]]

    def compute(self, adapter, id_lists, prompts: Sequence[int], fill_id: int, remote=None) -> None:
        """Run the distinct ``prompts`` once, unpatched, and store their streams."""
        if not self.layers:
            return
        unique = sorted(set(prompts))
        batch = pad([id_lists[i] for i in unique], fill_id)
        reads, _ = adapter.run(batch, self.read_plan(), logits=False, remote=remote)
        self.keep(reads, batch, unique)

    def start(self, layer: int, prompts: Sequence[int], batch: TokenBatch):
        """``(layer, hidden [batch, seq, d_model])`` to start ``batch`` at ``layer`` (zeros at padding), or None."""
        if layer not in self.layers:
            return None
        first, lengths = batch.first.tolist(), batch.lengths.tolist()
        sample = self._streams[(prompts[0], layer)]
        out = sample.new_zeros((len(prompts), batch.input_ids.shape[1], sample.shape[-1]))
        for r, i in enumerate(prompts):
            out[r, first[r]:first[r] + lengths[r]] = self._streams[(i, layer)]
        return layer, out
