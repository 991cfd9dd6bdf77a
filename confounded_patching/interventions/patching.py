"""Classic activation patching: copy one node's value between the runs of a clean/corrupt pair.

For each clean/corrupt pair (equal token lengths) and each node, run the
target prompt (corrupt when denoising, clean when noising) with the node set
to its value in the other run; :class:`~.clean_corrupt.PatchingResult` holds
the patched metric and the normalized scores (see
:mod:`~.clean_corrupt`). Many patches run in one forward pass: every
(pair, node) combination is a patched row (:mod:`~.rows`), ``batch_size``
rows per pass, next to the unpatched rows of their pairs.
``method="attribution"`` hands over to :func:`~.attribution.attribution_patch`;
``method="auto"`` patches each node kind the way :data:`AUTO` names.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..metrics import evaluate, logits_request
from ..models.sites import Plan, Read, ReadKey
from ..models.tokens import pad
from ..nodes import Node
from ..progress import progress_counter
from ..validation import check_bool
from .attribution import attribution_scores
from .clean_corrupt import DIRECTIONS, METHODS, PatchingResult, PatchInputs, prepare
from .rows import PrefixCache, Row, run_rows

__all__ = ["patch", "PatchingResult", "DIRECTIONS", "METHODS", "AUTO"]

#: ``method="auto"``: how each node kind is patched. Attribution patching (one forward and one backward pass
#: per pair for every node) where it ranked the nodes as exact patching did, exact patching where it did not:
#: against exact patching on 8 clean/corrupt pairs of professions, capitals and ioi with SmolLM2-135M
#: (``benchmarks/patch_auto.py``; docs/benchmarks.md), Spearman of |score| for 270 heads 0.96-1.00 (Pearson
#: 0.86-1.00), for 30 MLPs 0.91-0.97 (Pearson 0.97-0.99), for 90 residual-stream nodes 0.67-0.98 (0.67 on
#: professions), which are few and cheap to patch exactly.
AUTO = {"head": "attribution", "mlp": "attribution", "resid": "exact"}


def patch(
    model,
    clean,
    corrupt,
    nodes: Sequence[Node] | None = None,
    metric=None,
    *,
    direction: str = "denoise",
    method: str = "exact",
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
    prefix_cache: bool = True,
) -> PatchingResult:
    """Patch every node, for every clean/corrupt pair.

    Args:
        model: nnsight, TransformerLens or HF model (with ``tokenizer``).
        clean, corrupt: prompts (strings, LongTensor ``[pairs, seq]`` or id
            lists); pair ``i`` must have equal token lengths.
        nodes: nodes to patch (default: every node at the last position,
            ``cp.nodes(model)``). ``pos=None`` patches every position.
        metric: callable on last-position logits ``[batch, vocab] -> [batch]``
            (e.g. ``cp.metrics.logit_diff(" Paris", " Rome")``).
        direction: ``"denoise"`` (clean → corrupted run) or ``"noise"``.
        method: ``"exact"``, ``"attribution"`` (gradient approximation,
            :func:`~.attribution.attribution_patch`) or ``"auto"`` (each node kind as :data:`AUTO` says:
            heads and MLPs by attribution, the residual stream exactly); the result's ``methods`` say
            how each node was computed.
        batch_size: patched rows per forward pass (bounds memory).
        prefix_cache: start each patched row at its node's layer, from the
            unpatched run's residual stream cached at that layer, instead of
            recomputing the identical earlier blocks (exact up to float
            rounding; about half the block FLOPs of a whole-model sweep).
            Needs a local nnsight or plain HF model whose blocks return a
            tensor; otherwise every row runs from the embeddings. Memory:
            pairs × tokens × d_model × layers of the patched run.
        remote: passed to nnsight's trace (``"local"`` for the serialisation
            dry run); turns ``prefix_cache`` off.

    Returns:
        :class:`PatchingResult`, with ``raw[pair, node]`` in the order of ``nodes``.
    """
    check_bool("prefix_cache", prefix_cache)
    check_bool("progress", progress)
    inputs = prepare(model, clean, corrupt, nodes, metric, direction=direction, method=method,
                     batch_size=batch_size, tokenizer=tokenizer)
    if method == "attribution":
        return inputs.result(*attribution_scores(inputs, progress=progress, remote=remote), method="attribution")
    if method == "exact":
        return inputs.result(*_exact(inputs, batch_size, progress, remote, prefix_cache), method="exact")
    how = [AUTO.get(n.kind, "exact") for n in inputs.nodes]
    raw = np.zeros((len(inputs.clean_ids), len(inputs.nodes)))
    clean_m = corrupt_m = None
    for name in ("attribution", "exact"):
        cols = [k for k, h in enumerate(how) if h == name]
        if not cols:
            continue
        part = dataclasses.replace(inputs, nodes=[inputs.nodes[k] for k in cols])
        if name == "attribution":
            got = attribution_scores(part, progress=progress, remote=remote)
        else:
            got = _exact(part, batch_size, progress, remote, prefix_cache)
        raw[:, cols] = got[0]
        if clean_m is None or name == "exact":  # both runs give the unpatched metrics; exact's are its own
            clean_m, corrupt_m = got[1], got[2]
    used = set(how)
    return inputs.result(raw, clean_m, corrupt_m, method=used.pop() if len(used) == 1 else "auto", methods=how)


def _site_reads(sites) -> Plan:
    """Reads of the whole tensor at each site (the source run's values, every position)."""
    plan = Plan()
    for kind, layer in sites:
        plan.add_read(Read(ReadKey.site(kind, layer)))
    return plan


def _exact(inputs: PatchInputs, batch_size: int, progress: bool, remote, prefix_cache: bool) -> tuple:
    """(raw, clean, corrupt) of exact patching: every (pair, node) as a patched row of the target run."""
    adapter, nodes, metric, direction = inputs.adapter, inputs.nodes, inputs.metric, inputs.direction
    clean_ids, corrupt_ids, fill_id = inputs.clean_ids, inputs.corrupt_ids, inputs.fill_id
    target_ids = corrupt_ids if direction == "denoise" else clean_ids
    want = logits_request(metric)
    n_pairs = len(clean_ids)
    raw = np.zeros((n_pairs, len(nodes)))
    clean_m, corrupt_m = np.zeros(n_pairs), np.zeros(n_pairs)
    target_m = corrupt_m if direction == "denoise" else clean_m
    reads = _site_reads(sorted({(n.kind, n.layer) for n in nodes}, key=lambda s: (s[1], s[0])))
    use_cache = prefix_cache and remote is None and adapter.can_start()
    by_length = inputs.by_length()
    bar = progress_counter(n_pairs * len(nodes), progress, desc="patch (exact)", unit="patch")
    for group in by_length.values():
        cb, xb = pad([clean_ids[i] for i in group], fill_id), pad([corrupt_ids[i] for i in group], fill_id)
        local = {g: p for p, g in enumerate(group)}
        # the patched run's residual stream, where patched rows start (read during its unpatched run)
        cache = PrefixCache(n.layer for n in nodes if n.layer > 0) if use_cache else PrefixCache(())
        clean_reads, clean_logits = adapter.run(cb, reads if direction == "denoise" else cache.read_plan(),
                                                logits=want, remote=remote)
        corrupt_reads, corrupt_logits = adapter.run(xb, reads if direction == "noise" else cache.read_plan(),
                                                    logits=want, remote=remote)
        src = clean_reads if direction == "denoise" else corrupt_reads
        cache.keep(corrupt_reads if direction == "denoise" else clean_reads,
                   xb if direction == "denoise" else cb, group)
        clean_logits = clean_logits.float()
        ref = clean_logits if metric.needs_clean else None
        mask = cb.attention_mask
        clean_m[group] = evaluate(metric, clean_logits, ref, rows=group, mask=mask).cpu().numpy()
        corrupt_m[group] = evaluate(metric, corrupt_logits.float(), ref, rows=group, mask=mask).cpu().numpy()
        src = {k: v.detach() for k, v in src.items()}
        length = len(clean_ids[group[0]])

        # rows in layer order, so a chunk's rows share (nearly) one starting layer
        todo = sorted(((g, k) for g in group for k in range(len(nodes))), key=lambda r: (nodes[r[1]].layer, r[0]))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = [Row(g, (nodes[k],)) for g, k in chunk]
            out = run_rows(adapter, target_ids, rows, _source_fill(src, rows, local, length), metric,
                           fill_id=fill_id, prefix=cache or None,
                           reference=lambda prompts: clean_logits[[local[g] for g in prompts]], remote=remote)
            gs, ks = [g for g, _ in chunk], [k for _, k in chunk]
            raw[gs, ks] = target_m[gs] + out.effects
            bar.update(len(chunk))
    bar.close()
    return raw, clean_m, corrupt_m


def _source_fill(src: dict, rows, local: dict, length: int):
    """Values of the patched rows' nodes in the source run (``src``: its whole site tensors, pairs in ``local`` order)."""

    def fill(node, js):
        value = src[ReadKey.site(node.kind, node.layer)][[local[rows[j].prompt] for j in js]]  # [n, seq, ...]
        if node.pos is not None:
            value = value[:, node.pos if node.pos >= 0 else length + node.pos]
        return value[..., node.head, :] if node.kind == "head" else value

    return fill
