"""Reading many nodes in one forward pass per batch: ``collect`` and ``capture``.

``collect(model, prompts, nodes)`` runs the prompts in padded batches and
returns an :class:`~.captured.Activations` result: ``acts[node]`` is a float32 tensor
``[n_prompts, d]`` (``d = head_dim`` for heads, ``d_model`` otherwise) read
at the node's position of each prompt. Every node of a batch is read in the
same forward pass, so the cost is one forward per batch whatever the number
of nodes. With ``store=DIR`` the batches are written to disk as safetensors
shards as they are computed, a run that was interrupted resumes where it
stopped, and peak memory is bounded by one batch.

``capture(model, nodes)`` does the same inside a user's own nnsight trace::

    with model.trace(batch):
        store = capture(model, nodes)
        ...                               # the user's own interventions
    store[Head(3, 1)]                     # tensor [batch, head_dim]
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError, describe
from ..metrics import as_metric, evaluate, logits_request
from ..models import adapt
from ..models.adapters import NNsightAdapter
from ..models.sites import Plan, Read, ReadKey
from ..models.tokens import TokenBatch, as_id_lists, columns, pad, pad_id
from ..nodes import Node, is_node
from ..progress import progress_bar
from ..validation import (check_bool, check_choice, check_int, check_positions, check_token_ids, is_int,
                          unknown_token_warning)
from .captured import Activations, Captured
from .fingerprint import identity
from .store import ActivationStore

__all__ = ["collect", "capture", "read_plan", "split_reads", "check_nodes", "check_prompts"]


def check_nodes(adapter, nodes, *, argument: str = "nodes", allow_all_positions: bool = False) -> list[Node]:
    """Validate a node list against a model; returns it as a list."""
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Iterable):
        raise InputError(f"{argument} must be a list of nodes (MLP, Head, Resid); received {describe(nodes)}")
    nodes = list(nodes)
    if not nodes:
        raise InputError(f"{argument} must contain at least one node; received an empty list")
    for i, node in enumerate(nodes):
        if not is_node(node):
            raise InputError(f"{argument}[{i}] must be an MLP, Head or Resid node; received {describe(node)}")
        adapter.check_node(node, argument=argument)
        if node.pos is None and not allow_all_positions:
            raise InputError(f"{argument}[{i}] = {node!r}: pos=None (every position) is not supported here; "
                             "give an integer position")
    if len(set(nodes)) != len(nodes):
        raise InputError(f"{argument} contains duplicate nodes")
    return nodes


def check_prompts(adapter, prompts, *, argument: str = "prompts") -> list[list[int]]:
    """The token ids of ``prompts``, checked against the model before any forward pass.

    Every id must lie in the model's vocabulary and every prompt fit its context
    (:func:`~confounded_patching.validation.check_token_ids`); string prompts holding words the
    tokenizer encodes as its unknown token get a warning.
    """
    id_lists = as_id_lists(prompts, adapter.tokenizer, argument=argument)
    check_token_ids(id_lists, adapter.spec, argument=argument)
    message = unknown_token_warning(prompts, id_lists, adapter.tokenizer, argument=argument)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return id_lists


def read_plan(batch: TokenBatch, nodes: Sequence[Node], *, offset: int = 0, embed_layer: int | None = None) -> Plan:
    """A plan that reads every node (grouped per site and position) from ``batch``."""
    plan = Plan()
    cols: dict[int, torch.Tensor] = {}
    for kind, layer, pos in sorted({(n.kind, n.layer, n.pos) for n in nodes}, key=lambda s: (s[1], s[0], s[2])):
        if pos not in cols:
            cols[pos] = columns(batch, pos, offset=offset)
        plan.add_read(Read(ReadKey(kind, layer, pos), cols[pos]))
    if embed_layer is not None:
        plan.add_read(Read(ReadKey.mean("resid", embed_layer), None, batch.attention_mask))
    return plan


def split_reads(out: dict, nodes: Sequence[Node]) -> dict[Node, torch.Tensor]:
    """Per-node float32 CPU tensors ``[batch, d]`` from a plan's reads."""
    acts = {}
    for node in nodes:
        value = out[ReadKey.node(node)]
        if node.kind == "head":
            value = value[:, node.head]
        acts[node] = value.detach().to("cpu", torch.float32)
    return acts


def _batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Prompt indices grouped into batches of similar length (less padding)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collect(
    model,
    prompts,
    nodes: Sequence[Node],
    *,
    batch_size: int = 32,
    tokenizer=None,
    metric=None,
    embed_layer: int | None = None,
    padding_side: str = "left",
    store=None,
    progress: bool = True,
    remote=None,
):
    """Activations of ``nodes`` on ``prompts``, one forward pass per batch.

    Args:
        model: nnsight model, TransformerLens model or HF model (with ``tokenizer``).
        prompts: list of strings, LongTensor ``[n, seq]`` or list of id lists.
        nodes: nodes with integer positions (negative: from the last real token).
        batch_size: prompts per forward pass (bounds memory).
        metric: optional metric on last-position logits; its value per prompt
            is stored as ``outcome``.
        embed_layer: optional layer whose residual stream, averaged over each
            prompt's tokens, is stored as ``embedding`` (a query embedding).
        padding_side: ``"left"`` (default) or ``"right"``.
        store: a directory; batches are written there as they finish and an
            interrupted run resumes. Returns an :class:`~.store.ActivationStore`.
            The store records fingerprints of the model (weights included)
            and tokenizer; resuming or reusing it with another one is refused.
        progress: show a progress bar.
        remote: passed to nnsight's ``trace`` (e.g. ``remote=True`` for NDIF).

    Returns:
        :class:`Activations` (or an :class:`~.store.ActivationStore` with ``store=``).

    Example::

        >>> acts = collect(model, ["The nurse said that", "The pilot said that"], [MLP(3), Head(5, 1)])
        >>> acts[Head(5, 1)].shape
        torch.Size([2, 64])
    """
    adapter = adapt(model, tokenizer)
    nodes = check_nodes(adapter, nodes)
    check_int("batch_size", batch_size, minimum=1, expected="a positive int")
    check_bool("progress", progress)
    check_choice("padding_side", padding_side, ("left", "right"))
    if embed_layer is not None and not (is_int(embed_layer) and 0 <= embed_layer < adapter.spec.n_layers):
        raise InputError(f"embed_layer must be an int in [0, {adapter.spec.n_layers}); received {embed_layer!r}")
    id_lists = check_prompts(adapter, prompts)  # fail before any forward pass
    check_positions(id_lists, nodes)
    metric = None if metric is None else as_metric(metric, adapter.tokenizer, vocab_size=adapter.spec.vocab_size)
    if metric is not None and metric.needs_clean:
        raise InputError(f"metric {metric.name!r} compares with a clean run, which collect does not have")
    text = [p for p in prompts] if not isinstance(prompts, torch.Tensor) and all(isinstance(p, str) for p in prompts) else None
    groups = _batches([len(ids) for ids in id_lists], batch_size)
    fill = pad_id(adapter.tokenizer)
    meta = {"backend": adapter.name, "family": adapter.spec.family, "n_layers": adapter.spec.n_layers,
            "n_heads": adapter.spec.n_heads, "head_dim": adapter.spec.head_dim, "d_model": adapter.spec.d_model,
            "batch_size": batch_size, "padding_side": padding_side, "embed_layer": embed_layer,
            "metric": None if metric is None else metric.name}

    def run_batch(index):
        batch = pad([id_lists[i] for i in index], fill, padding_side)
        plan = read_plan(batch, nodes, embed_layer=embed_layer)
        out, logits = adapter.run(batch, plan, logits=metric is not None and logits_request(metric), remote=remote)
        result = split_reads(out, nodes)
        extra = {"lengths": batch.lengths.cpu()}
        if metric is not None:
            extra["outcome"] = evaluate(metric, logits.float(), rows=index,
                                        mask=batch.attention_mask.to(logits.device)).detach().cpu()
        if embed_layer is not None:
            extra["embedding"] = out[ReadKey.mean("resid", embed_layer)].detach().to("cpu", torch.float32)
        return result, extra

    if store is not None:
        return ActivationStore.build(store, nodes, id_lists, groups, run_batch, meta=meta, prompts=text,
                                     progress=progress, identity=identity(adapter))

    parts, extras, order = [], [], []
    for index in progress_bar(groups, progress, desc="collect", unit="batch"):
        result, extra = run_batch(index)
        parts.append(result)
        extras.append(extra)
        order.append(index)
    inverse = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    values = [torch.cat([p[n] for p in parts])[inverse] for n in nodes]

    def cat(name):
        return torch.cat([e[name] for e in extras])[inverse] if name in extras[0] else None

    return Activations(nodes=nodes, values=values, prompts=text, lengths=cat("lengths"), outcome=cat("outcome"),
                       embedding=cat("embedding"), meta=meta)


def capture(model, nodes: Sequence[Node], attention_mask: torch.Tensor | None = None) -> Captured:
    """Capture ``nodes`` inside the caller's open nnsight trace.

    Call it inside ``with model.trace(...):`` before any intervention on a
    later module (nnsight requires forward order). Positions are aligned with
    ``attention_mask`` (the batch's mask; read from the trace's inputs when
    omitted, else every token is taken as real).

    Returns:
        A :class:`Captured` object, already saved: after the trace,
        ``store[node]`` is a tensor ``[batch, d]``.
    """
    import nnsight  # only when tracing: importing nnsight patches sys.excepthook and Tensor.backward

    adapter = adapt(model)
    if not isinstance(adapter, NNsightAdapter):
        raise InputError(f"capture() works inside an nnsight trace; received a {adapter.name} model. "
                         "Use collect() for other backends.")
    nodes = check_nodes(adapter, nodes)
    if attention_mask is None:
        attention_mask = _trace_mask(model)
    elif not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        raise InputError(f"attention_mask must be a tensor [batch, seq] of 0s and 1s (the trace's mask); received "
                         f"{describe(attention_mask)}")
    batch = TokenBatch(torch.zeros_like(attention_mask), attention_mask.long(),
                       "right" if bool(attention_mask[:, -1].eq(0).any()) else "left")
    raw = adapter.capture_in_trace(read_plan(batch, nodes).to(adapter.device))
    return nnsight.save(Captured(raw, nodes))


def _trace_mask(model) -> torch.Tensor:
    args, kwargs = model.inputs
    mask = kwargs.get("attention_mask")
    if mask is None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise InputError("capture() could not find the trace's input ids; pass attention_mask=...")
        mask = torch.ones_like(ids)
    return mask
