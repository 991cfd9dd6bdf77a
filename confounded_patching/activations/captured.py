"""Activations of many nodes over many prompts: the results of a capture pass.

- :class:`Activations` — what :func:`~.collect.collect` returns:
  ``acts[node]`` is a float32 tensor ``[n_prompts, d]`` (``d = head_dim`` for
  heads, ``d_model`` otherwise) read at the node's position of each prompt,
  with the outcome metric and a query embedding per prompt when asked for.
- :class:`Captured` — what :func:`~.collect.capture` returns inside a user's
  own nnsight trace; index it with a node once the trace has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import InputError, describe
from ..models.sites import ReadKey
from ..nodes import Node
from ..results import Result, check_array, check_nodes_field

__all__ = ["Activations", "Captured"]


@dataclass(frozen=True)
class Activations(Result):
    """Activations of many nodes over many prompts.

    Attributes:
        nodes: the nodes, in the order given.
        values: one float32 tensor ``[n_prompts, d]`` per node, same order.
        prompts: the prompts as given (strings), or None for token-id input.
        lengths: number of tokens of each prompt, ``[n_prompts]``.
        outcome: the metric evaluated on each prompt's last-position logits
            ``[n_prompts]``, when ``collect`` was given a metric.
        embedding: mean of the residual stream over each prompt's tokens at
            ``embed_layer`` ``[n_prompts, d_model]``, when requested.
        meta: model sizes and collection settings.
    """

    nodes: list
    values: list
    prompts: list | None = None
    lengths: torch.Tensor | None = None
    outcome: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.nodes)})

    def _check(self) -> None:
        """Shapes agree: one ``[n_prompts, d]`` tensor per node, per-prompt extras of ``n_prompts`` rows (run by ``load``)."""
        k = check_nodes_field("nodes", self.nodes)
        if not isinstance(self.values, list) or len(self.values) != k:
            raise InputError(f"field 'values' must hold one tensor per node ({k}); received {describe(self.values)}")
        n = check_array("values[0]", self.values[0], (None, None))[0] if k else None
        for i, value in enumerate(self.values):
            check_array(f"values[{i}]", value, (n, None))
        check_array("lengths", self.lengths, (n,), optional=True, integer=True)
        check_array("outcome", self.outcome, (n,), optional=True)
        check_array("embedding", self.embedding, (n, None), optional=True)
        if self.prompts is not None and (not isinstance(self.prompts, list) or len(self.prompts) != n):
            raise InputError(f"field 'prompts' must be None or one prompt per row ({n}); received "
                             f"{describe(self.prompts)}")

    def __getitem__(self, node: Node) -> torch.Tensor:
        try:
            return self.values[self._index[node]]
        except KeyError:
            raise KeyError(f"{node!r} was not collected; collected nodes include {self.nodes[:3]!r}...") from None

    def __contains__(self, node) -> bool:
        return node in self._index

    def __len__(self) -> int:
        return int(self.values[0].shape[0]) if self.values else 0

    def __iter__(self):
        return iter(self.nodes)

    def items(self):
        return zip(self.nodes, self.values)

    def stack(self, nodes: Sequence[Node] | None = None) -> torch.Tensor:
        """``[n_nodes, n_prompts, d]`` for nodes of equal dimension."""
        nodes = self.nodes if nodes is None else nodes
        return torch.stack([self[n] for n in nodes])

    def to_dataframe(self):
        """Long form: one row per (prompt, node) with the activation's norm."""
        import pandas as pd

        rows = []
        for node, value in self.items():
            norms = value.norm(dim=-1).tolist()
            for i, norm in enumerate(norms):
                rows.append({"prompt": i, "node": node.label, "kind": node.kind, "layer": node.layer,
                             "head": getattr(node, "head", None), "pos": node.pos, "dim": value.shape[-1],
                             "norm": norm})
        return pd.DataFrame(rows)


class Captured:
    """Values captured inside a trace; index with a node after the trace has run."""

    def __init__(self, raw: dict, nodes: Sequence[Node]):
        self._raw = raw
        self.nodes = list(nodes)

    def __getitem__(self, node: Node) -> torch.Tensor:
        if node not in self.nodes:
            raise KeyError(f"{node!r} was not captured")
        value = self._raw[ReadKey.node(node)]
        return value[:, node.head] if node.kind == "head" else value

    def to_activations(self) -> Activations:
        return Activations(nodes=self.nodes, values=[self[n].to("cpu", torch.float32) for n in self.nodes])
