"""What to read and write at each site of a forward pass.

A *site* is one tensor of the forward pass that holds nodes: the input of
block ``l`` (residual nodes), the input of its attention output projection
(head nodes, viewed as ``[batch, seq, n_heads, head_dim]``) or the MLP's
output (MLP nodes). A :class:`Plan` lists, per site, the reads (values at one
column per row) and the writes (patched values for some rows), and
:func:`apply` performs them on the tensor in place. Every backend — nnsight
traces, torch hooks, TransformerLens hooks — calls the same :func:`apply`, so
the indexing logic exists once. Reads land in a dict under a typed
:class:`ReadKey`: the site, and what was read there (one column per row for
the nodes at a position, the whole tensor, or its mean over real tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..nodes import SITE_ORDER

__all__ = ["ReadKey", "Read", "Write", "Plan", "apply", "SITE_ORDER"]


class ReadKey(NamedTuple):
    """Where :func:`apply` puts a read in its ``out`` dict.

    ``kind`` and ``layer`` name the site; ``what`` is ``"node"`` (the values
    at one column per row: the nodes at position ``pos``), ``"site"`` (the
    whole tensor ``[batch, seq, ...]``) or ``"mean"`` (its mean over each
    row's real tokens).
    """

    kind: str
    layer: int
    pos: int | None = None
    what: str = "node"

    @classmethod
    def node(cls, node) -> "ReadKey":
        """The key of ``node``'s values (heads of a layer and position share one key)."""
        return cls(node.kind, node.layer, node.pos)

    @classmethod
    def site(cls, kind: str, layer: int) -> "ReadKey":
        return cls(kind, layer, None, "site")

    @classmethod
    def mean(cls, kind: str, layer: int) -> "ReadKey":
        return cls(kind, layer, None, "mean")


@dataclass
class Read:
    """Read ``tensor[row, cols[row]]`` for every row into ``out[key]``.

    With ``cols=None`` and a ``mask`` ``[batch, seq]``, read the mean over the
    row's real tokens instead (used for prompt embeddings); with neither, read
    the whole tensor. The site is ``(key.kind, key.layer)``.
    """

    key: ReadKey
    cols: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class Write:
    """Set ``tensor[rows, cols(, heads)] = values`` (``cols=None``: every position)."""

    rows: torch.Tensor
    cols: torch.Tensor | None
    values: torch.Tensor
    heads: torch.Tensor | None = None


@dataclass
class Plan:
    """Reads and writes per site ``(kind, layer)``."""

    reads: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)

    def add_read(self, read: Read) -> None:
        self.reads.setdefault((read.key.kind, read.key.layer), []).append(read)

    def add_write(self, kind: str, layer: int, write: Write) -> None:
        self.writes.setdefault((kind, layer), []).append(write)

    def sites(self) -> list[tuple[str, int]]:
        """Sites in forward order."""
        return sorted(set(self.reads) | set(self.writes), key=lambda s: (s[1], SITE_ORDER[s[0]]))

    def to(self, device) -> "Plan":
        move = lambda t: None if t is None else t.to(device)
        reads = {s: [Read(r.key, move(r.cols), move(r.mask)) for r in rs] for s, rs in self.reads.items()}
        writes = {s: [Write(move(w.rows), move(w.cols), move(w.values), move(w.heads)) for w in ws]
                  for s, ws in self.writes.items()}
        return Plan(reads, writes)


def apply(plan: Plan, site: tuple[str, int], tensor: torch.Tensor, n_heads: int, out: dict) -> None:
    """Perform the plan's reads, then its writes, on ``tensor`` (in place).

    ``tensor`` is ``[batch, seq, d]``; for head sites it may also be the
    already split ``[batch, seq, n_heads, head_dim]``.
    """
    t = tensor
    if site[0] == "head" and t.ndim == 3:
        t = t.unflatten(-1, (n_heads, t.shape[-1] // n_heads))
    reads = plan.reads.get(site, ())
    if reads:
        rows = torch.arange(t.shape[0], device=t.device)
        for read in reads:
            if read.cols is None and read.mask is None:
                out[read.key] = t.detach().clone()
            elif read.cols is None:
                m = read.mask.to(t.dtype)
                out[read.key] = (t.detach() * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
            else:
                out[read.key] = t[rows, read.cols].detach().clone()
    for w in plan.writes.get(site, ()):
        values = w.values.to(t.dtype)
        if w.heads is None:
            if w.cols is None:
                t[w.rows] = values
            else:
                t[w.rows, w.cols] = values
        elif w.cols is None:
            t[w.rows, :, w.heads] = values
        else:
            t[w.rows, w.cols, w.heads] = values
