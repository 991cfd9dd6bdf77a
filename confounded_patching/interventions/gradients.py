"""Node values and the outcome's gradient at each node, prompt by prompt.

The first-order resample AIE (:mod:`~.resample`) needs, for every prompt
``i`` and node ``n``, the node's value ``n_i`` and the gradient
``g_i = ∂y_i/∂n`` of the outcome at it, in prompt ``i``'s own run. One
forward and one backward pass per batch of prompts give both for every node
at once (:meth:`~confounded_patching.models.adapters.Adapter.grad_run`:
``torch.autograd.grad`` on the sites' tensors, so no parameter's ``.grad``
is touched). Prompts that serve only as donors need their values alone: a
plain forward pass, as :func:`~confounded_patching.collect` runs.

Example::

    >>> vg = node_gradients(adapter, id_lists, nodes, metric, grad_nodes=nodes, grad_prompts=range(m))
    >>> vg.values[node].shape, vg.grads[node].shape          # [m, d] each (pos=None: [m, seq, d])
    >>> vg.outcome                                            # y_i [m] (NaN where no forward ran)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..activations.capturing import read_plan, split_reads
from ..errors import InputError
from ..metrics import evaluate, logits_request
from ..models.sites import Read, ReadKey
from ..models.tokens import TokenBatch, columns, pad, pad_id
from ..nodes import Node
from ..progress import progress_counter

__all__ = ["NodeGradients", "node_gradients", "check_differentiable"]


@dataclass(frozen=True)
class NodeGradients:
    """Per-node values and outcome gradients over prompts.

    Attributes:
        values: node -> float32 ``[n_prompts, d]`` (``[n_prompts, seq, d]`` for ``pos=None``); rows of
            prompts that were not run are NaN.
        grads: node -> float32 tensor of the same shape; rows of prompts without a backward pass are NaN.
        outcome: ``y_i`` per prompt ``[n_prompts]`` (NaN where no forward pass ran).
    """

    values: dict
    grads: dict
    outcome: np.ndarray


def check_differentiable(value: torch.Tensor, metric_name: str, *, argument: str = "outcome") -> None:
    """Raise unless ``value`` (the outcome of a batch) depends differentiably on the logits."""
    if not value.requires_grad:
        raise InputError(
            f"{argument} {metric_name!r} is not differentiable in the logits (its value carries no gradient: an "
            f"argmax, a comparison, or integer labels?), so method='attribution' cannot linearize it; use "
            f"method='exact', or a smooth outcome such as cp.metrics.logit_diff or cp.metrics.prob_diff")


def node_gradients(adapter, id_lists, nodes: Sequence[Node], metric, *, grad_nodes: Sequence[Node] = (),
                   grad_prompts=(), value_prompts=(), batch_size: int = 32, progress: bool = True,
                   remote=None, argument: str = "outcome") -> NodeGradients:
    """Values of ``nodes`` and the outcome, with the gradients of ``grad_nodes`` on ``grad_prompts``.

    ``metric`` is a bound metric (per-row metrics are evaluated at each row's prompt). Prompts of
    ``value_prompts`` that are not in ``grad_prompts`` get a plain forward pass (values and outcome only).
    Prompts run in batches of similar length; every node of a batch is read in the same pass.
    """
    m = len(id_lists)
    grad_nodes = list(grad_nodes)
    grad_prompts = sorted({int(i) for i in grad_prompts}) if grad_nodes else []
    value_only = sorted({int(i) for i in value_prompts} - set(grad_prompts))
    shapes = {n: _shape(adapter, n, id_lists) for n in nodes}
    values = {n: torch.full((m, *shapes[n]), float("nan")) for n in nodes}
    grads = {n: torch.full((m, *shapes[n]), float("nan")) for n in grad_nodes}
    outcome = np.full(m, np.nan)
    fill = pad_id(adapter.tokenizer)
    full = bool(getattr(metric, "full", False))
    sites = sorted({(n.kind, n.layer) for n in nodes}, key=lambda s: (s[1], s[0]))
    bar = progress_counter(len(grad_prompts) + len(value_only), progress, desc="resample (forward)"
                           if not grad_prompts else "resample (gradients)", unit="prompt")
    for index in _batches(id_lists, grad_prompts, batch_size):
        batch = pad([id_lists[i] for i in index], fill)
        mask = batch.attention_mask.to(adapter.device)

        def fn(logits, index=index, mask=mask):
            y = evaluate(metric, logits.float(), rows=index, mask=mask, argument=argument)
            check_differentiable(y, metric.name, argument=argument)
            return y

        acts, g, logits = adapter.grad_run(batch, sites, fn, full=full)
        outcome[index] = _finite(evaluate(metric, logits.float(), rows=index, mask=mask, argument=argument),
                                 metric, index, argument)
        for node in nodes:
            values[node][index] = _at_node(acts[(node.kind, node.layer)], node, batch)
        for node in grad_nodes:
            grads[node][index] = _at_node(g[(node.kind, node.layer)], node, batch)
        bar.update(len(index))
    timed = [n for n in nodes if n.pos is not None]
    whole = [n for n in nodes if n.pos is None]
    for index in _batches(id_lists, value_only, batch_size):
        batch = pad([id_lists[i] for i in index], fill)
        plan = read_plan(batch, timed)
        for kind, layer in sorted({(n.kind, n.layer) for n in whole}, key=lambda s: (s[1], s[0])):
            plan.add_read(Read(ReadKey.site(kind, layer)))
        out, logits = adapter.run(batch, plan, logits=logits_request(metric), remote=remote)
        outcome[index] = _finite(evaluate(metric, logits.float(), rows=index,
                                          mask=batch.attention_mask.to(logits.device), argument=argument),
                                 metric, index, argument)
        for node, value in (split_reads(out, timed).items() if timed else ()):
            values[node][index] = value
        for node in whole:
            site = out[ReadKey.site(node.kind, node.layer)]
            values[node][index] = _at_node(site, node, batch)
        bar.update(len(index))
    bar.close()
    return NodeGradients(values=values, grads=grads, outcome=outcome)


def _finite(y: torch.Tensor, metric, index, argument: str) -> np.ndarray:
    """``y`` as numpy, or an error naming the prompts where the outcome is NaN or inf."""
    y = y.detach().cpu().double().numpy()
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise InputError(f"{argument} {metric.name!r} is not finite (NaN or inf) on prompt(s) "
                         f"{[int(index[b]) for b in bad[:5]]}")
    return y


def _shape(adapter, node: Node, id_lists) -> tuple:
    d = adapter.spec.head_dim if node.kind == "head" else adapter.spec.d_model
    if node.pos is None:  # every position: the callers ensure all prompts have one length
        return (len(id_lists[0]), d)
    return (d,)


def _batches(id_lists, prompts: Sequence[int], batch_size: int) -> list[list[int]]:
    """``prompts`` in batches of similar token length (less padding)."""
    order = sorted(prompts, key=lambda i: len(id_lists[i]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _at_node(site: torch.Tensor, node: Node, batch: TokenBatch) -> torch.Tensor:
    """The node's slice of a site tensor ``[batch, seq, d]`` (heads ``[batch, seq, H, hd]``), float32 CPU."""
    if node.kind == "head":
        site = site[:, :, node.head]
    if node.pos is None:
        first, lengths = batch.first.tolist(), batch.lengths.tolist()
        out = torch.stack([site[r, f:f + n] for r, (f, n) in enumerate(zip(first, lengths))])
    else:
        rows = torch.arange(site.shape[0], device=site.device)
        out = site[rows, columns(batch, node.pos).to(site.device)]
    return out.detach().to("cpu", torch.float32)
