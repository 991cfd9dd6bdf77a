"""Nodes of a transformer's computation graph that can be read, patched and scored.

Three kinds, all hashable, ordered and printable:

- ``MLP(layer, pos)``: the MLP block's own contribution to the residual stream.
- ``Head(layer, head, pos)``: one attention head's slice of the input to the
  attention output projection (``o_proj`` / ``c_proj`` / ``dense``), the
  quantity TransformerLens calls ``hook_z``.
- ``Resid(layer, pos)``: the residual stream entering block ``layer``
  (TransformerLens ``hook_resid_pre``).

Positions count from the end of each prompt when negative (``-1`` is the last
real token, whatever the padding), and from its first real token otherwise.
``pos=None`` means every position of the prompt.

Example::

    >>> nodes(model, kinds=("mlp", "head"), positions=(-1,))[:2]
    [MLP(0, pos=-1), MLP(1, pos=-1)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from .errors import InputError, describe
from .validation import check_int, is_int

__all__ = ["MLP", "Head", "Resid", "Node", "nodes", "node_from_dict", "is_node", "sort_key", "KINDS", "SITE_ORDER",
           "NODE_TYPES"]

KINDS = ("mlp", "head", "resid")
#: Order of the sites within a block, in the forward pass: its input (resid), the heads, the MLP.
SITE_ORDER = {"resid": 0, "head": 1, "mlp": 2}


@dataclass(frozen=True, order=True)
class _NodeBase:
    def __post_init__(self) -> None:
        check_int("layer", self.layer, minimum=0, numpy=False)
        check_int("pos", self.pos, allow_none=True, numpy=False)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def to_dict(self) -> dict:
        data = {"kind": self.kind}
        data.update({f: getattr(self, f) for f in self.__dataclass_fields__})
        return data

    @property
    def label(self) -> str:
        """Short label such as ``L3H2@-1``, ``MLP3@-1`` or ``R3@-2``."""
        where = "" if self.pos is None else f"@{self.pos}"
        return f"{self._short()}{where}"


@dataclass(frozen=True, order=True)
class MLP(_NodeBase):
    """Output of the MLP block of ``layer`` (its contribution to the residual stream)."""

    layer: int
    pos: int | None = -1

    def _short(self) -> str:
        return f"MLP{self.layer}"

    def __repr__(self) -> str:
        return f"MLP({self.layer}, pos={self.pos})"


@dataclass(frozen=True, order=True)
class Head(_NodeBase):
    """Attention head ``head`` of ``layer``: its slice of the attention output projection's input."""

    layer: int
    head: int = 0
    pos: int | None = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("head", self.head, minimum=0, numpy=False)

    def _short(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __repr__(self) -> str:
        return f"Head({self.layer}, {self.head}, pos={self.pos})"


@dataclass(frozen=True, order=True)
class Resid(_NodeBase):
    """Residual stream entering block ``layer`` (``resid_pre``)."""

    layer: int
    pos: int | None = -1

    def _short(self) -> str:
        return f"R{self.layer}"

    def __repr__(self) -> str:
        return f"Resid({self.layer}, pos={self.pos})"


Node = Union[MLP, Head, Resid]
#: The node class of each kind.
NODE_TYPES = {"mlp": MLP, "head": Head, "resid": Resid}


def is_node(x) -> bool:
    """Whether ``x`` is an ``MLP``, ``Head`` or ``Resid`` node."""
    return type(x) in NODE_TYPES.values()


def node_from_dict(data: dict) -> Node:
    """Inverse of ``node.to_dict()``."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in NODE_TYPES:
        raise InputError(f"node kind must be one of {sorted(NODE_TYPES)}; received {kind!r}")
    return NODE_TYPES[kind](**data)


def sort_key(node: Node) -> tuple:
    """Forward order of execution: by layer, then resid < head < mlp."""
    return (node.layer, SITE_ORDER[node.kind], getattr(node, "head", 0), -10**9 if node.pos is None else node.pos)


def _int_sequence(name: str, value, *, allow_none: bool = False) -> list:
    """``value`` (an int, None where allowed, or a sequence of them) as a list of ints; numpy ints become ints."""
    if value is None and allow_none or is_int(value):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InputError(f"{name} must be an int or a sequence of ints; received {describe(value)}")
    out = []
    for v in value:
        if not (is_int(v) or (v is None and allow_none)):
            what = "ints or None" if allow_none else "ints"
            raise InputError(f"{name} must hold {what}; received {describe(v)}")
        out.append(None if v is None else int(v))
    return out


def nodes(
    model=None,
    kinds: Iterable[str] = KINDS,
    positions: Sequence[int | None] = (-1,),
    *,
    layers: Iterable[int] | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
) -> list[Node]:
    """Every node of the given kinds for a model, in forward order.

    Args:
        model: any model the library accepts (nnsight, TransformerLens, HF); used
            only to read the number of layers and heads. May be None when
            ``n_layers`` (and ``n_heads`` for heads) are given.
        kinds: any of ``"mlp"``, ``"head"``, ``"resid"``.
        positions: token positions; negative counts from the last real token.
            Heads and MLPs get one node per position, like residual nodes.
        layers: restrict to these layers (default: all).

    Returns:
        A list of nodes sorted by layer, then resid < head < MLP.

    Example::

        >>> len(nodes(n_layers=30, n_heads=9, kinds=("mlp", "head"), positions=(-1,)))
        300
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, Iterable):
        raise InputError(f"kinds must be a non-empty subset of {KINDS}; received {describe(kinds)}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if not isinstance(k, str) or k not in KINDS]
    if bad or not kinds:
        raise InputError(f"kinds must be a non-empty subset of {KINDS}; received {kinds!r}")
    positions = _int_sequence("positions", positions, allow_none=True)
    if not positions:
        raise InputError("positions must name at least one position; received an empty sequence")
    if model is not None:
        from .models import adapt  # here, not at the top: `import confounded_patching` must not load torch

        spec = adapt(model).spec
        n_layers, n_heads = spec.n_layers, spec.n_heads
    else:
        check_int("n_layers", n_layers, minimum=1, allow_none=True, expected="a positive int (or a model)")
        check_int("n_heads", n_heads, minimum=1, allow_none=True, expected="a positive int (or a model)")
    if n_layers is None or ("head" in kinds and n_heads is None):
        raise InputError("nodes() needs a model, or n_layers (and n_heads for heads)")
    layer_list = list(range(n_layers)) if layers is None else _int_sequence("layers", layers)
    for layer in layer_list:
        if not 0 <= layer < n_layers:
            raise InputError(f"layers must be ints in [0, {n_layers}); received {layer!r}")
    out: list[Node] = []
    for layer in layer_list:
        for pos in positions:
            if "resid" in kinds:
                out.append(Resid(layer, pos))
            if "head" in kinds:
                out.extend(Head(layer, h, pos) for h in range(n_heads))
            if "mlp" in kinds:
                out.append(MLP(layer, pos))
    return sorted(set(out), key=sort_key)
