"""Attribution patching: every patch of a clean/corrupt pair at once, from one gradient.

Attribution patching (Nanda 2023; Syed et al. 2023) approximates the effect
of patching node ``n`` to first order: ``effect ≈ (source − target) ·
∂metric/∂n``, with the gradient taken in the target run (corrupt when
denoising, clean when noising). One forward per run and one backward give
every node of every pair; :func:`~.patching.patch` with
``method="attribution"`` runs the same computation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..metrics import evaluate, for_rows
from ..models.sites import Plan, Read, ReadKey
from ..models.tokens import pad
from ..nodes import Node
from ..progress import progress_counter
from .clean_corrupt import PatchingResult, PatchInputs, prepare

__all__ = ["attribution_patch", "attribution_scores"]


def attribution_patch(model, clean, corrupt, nodes: Sequence[Node] | None = None, metric=None, *,
                      direction: str = "denoise", tokenizer=None, progress: bool = True, remote=None
                      ) -> PatchingResult:
    """Attribution patching of every node for every clean/corrupt pair (arguments as :func:`~.patching.patch`).

    Returns:
        :class:`~.clean_corrupt.PatchingResult` with ``method="attribution"``: ``raw[pair, node]`` is the
        target run's metric plus the linear estimate of the node's effect.
    """
    inputs = prepare(model, clean, corrupt, nodes, metric, direction=direction, method="attribution",
                     tokenizer=tokenizer)
    return inputs.result(*attribution_scores(inputs, progress=progress, remote=remote), method="attribution")


def attribution_scores(inputs: PatchInputs, *, progress: bool = True, remote=None) -> tuple:
    """(raw, clean, corrupt) of attribution patching on checked inputs (:func:`~.clean_corrupt.prepare`)."""
    adapter, nodes, metric, direction = inputs.adapter, inputs.nodes, inputs.metric, inputs.direction
    n_pairs, fill_id = len(inputs.clean_ids), inputs.fill_id
    raw = np.zeros((n_pairs, len(nodes)))
    clean_m, corrupt_m = np.zeros(n_pairs), np.zeros(n_pairs)
    sites = sorted({(n.kind, n.layer) for n in nodes}, key=lambda s: (s[1], s[0]))
    reads = Plan()
    for kind, layer in sites:
        reads.add_read(Read(ReadKey.site(kind, layer)))
    bar = progress_counter(n_pairs, progress, desc="patch (attribution)", unit="patch")
    for length, group in inputs.by_length().items():
        cb = pad([inputs.clean_ids[i] for i in group], fill_id)
        xb = pad([inputs.corrupt_ids[i] for i in group], fill_id)
        source_b, target_b = (cb, xb) if direction == "denoise" else (xb, cb)
        src_acts, _ = adapter.run(source_b, reads, logits=False)
        _, clean_logits = adapter.run(cb, Plan())
        clean_logits = clean_logits.float()
        ref = clean_logits if metric.needs_clean else None
        clean_m[group] = evaluate(metric, clean_logits, ref, rows=group, mask=cb.attention_mask).cpu().numpy()
        row_metric = for_rows(metric, group)
        fn = lambda lg: row_metric(lg.float(), clean_logits if metric.needs_clean else None)  # noqa: E731
        tgt_acts, grads, tgt_logits = adapter.grad_run(target_b, sites, fn)
        target_m = evaluate(metric, tgt_logits.float(), ref, rows=group).cpu().numpy()
        if direction == "denoise":
            corrupt_m[group] = target_m
        else:
            clean_m[group] = target_m
            _, corrupt_logits = adapter.run(xb, Plan(), remote=remote)
            corrupt_m[group] = evaluate(metric, corrupt_logits.float(), ref, rows=group).cpu().numpy()
        raw[group] = target_m[:, None] + _linear_effects(nodes, src_acts, tgt_acts, grads, length)
        bar.update(len(group))
    bar.close()
    return raw, clean_m, corrupt_m


def _linear_effects(nodes, src, tgt, grads, length) -> np.ndarray:
    """(source − target) · grad per pair and node ``[pairs, nodes]``."""
    out = []
    for node in nodes:
        key = ReadKey.site(node.kind, node.layer)
        delta, g = src[key] - tgt[(node.kind, node.layer)], grads[(node.kind, node.layer)]
        if node.kind == "head":
            delta, g = delta[:, :, node.head], g[:, :, node.head]
        prod = (delta * g).sum(-1)  # [pairs, seq]
        out.append(prod.sum(-1) if node.pos is None else prod[:, node.pos if node.pos >= 0 else length + node.pos])
    return torch.stack(out, dim=1).float().cpu().numpy()
