"""Tokenizing prompts into padded batches, and aligning node positions per prompt.

Prompts may be strings (tokenized with the model's tokenizer), a LongTensor
``[n, seq]`` of ids (every token real), or a list of id sequences of different
lengths. Batches are padded on the left by default, so that the last real
token of every row is the last column; right padding is supported too.
Positions of nodes are resolved per row: negative positions count from the
row's last real token, non-negative ones from its first real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, describe
from ..validation import beyond_prompt, is_int

__all__ = ["TokenBatch", "encode", "pad", "pad_id", "as_id_lists", "columns", "token_labels"]


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch: ids and mask ``[batch, seq]``, and each row's real-token span."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    padding_side: str

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)

    @property
    def first(self) -> torch.Tensor:
        """Column of each row's first real token."""
        seq = self.input_ids.shape[1]
        return torch.zeros_like(self.lengths) if self.padding_side == "right" else seq - self.lengths

    @property
    def last(self) -> torch.Tensor:
        """Column of each row's last real token."""
        return self.first + self.lengths - 1

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.padding_side)

    def repeat_rows(self, index: torch.Tensor) -> "TokenBatch":
        return TokenBatch(self.input_ids[index], self.attention_mask[index], self.padding_side)


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _ids_of(p):
    """A prompt given as ids (a 1-d integer tensor or array, or a sequence of ints) as a list, else None."""
    if isinstance(p, torch.Tensor):
        return p.tolist() if p.ndim == 1 and p.dtype in _INT_DTYPES else None
    if isinstance(p, np.ndarray):
        return p.tolist() if p.ndim == 1 and p.dtype.kind in "iu" else None
    if isinstance(p, (list, tuple)) and all(is_int(t) for t in p):
        return [int(t) for t in p]
    return None


def as_id_lists(prompts, tokenizer, *, argument: str = "prompts") -> list[list[int]]:
    """Token ids of each prompt (strings are tokenized, ids are taken as they are).

    ``prompts``: a list of strings or of id sequences (lists, 1-d integer tensors or arrays), or a 2-d
    integer tensor or array ``[n_prompts, seq]`` (every token real). Bools and floats are refused.
    """
    if isinstance(prompts, (torch.Tensor, np.ndarray)) and not (isinstance(prompts, np.ndarray)
                                                                 and prompts.dtype.kind in "OU"):
        kind_ok = (prompts.dtype in _INT_DTYPES) if isinstance(prompts, torch.Tensor) else prompts.dtype.kind in "iu"
        if prompts.ndim != 2 or not kind_ok:
            raise InputError(f"{argument} as a tensor must be a LongTensor [n_prompts, seq]; received {describe(prompts)}")
        id_lists = prompts.tolist()
    elif isinstance(prompts, (str, bytes)):
        raise InputError(f"{argument} must be a list of prompts, not a single string; received {describe(prompts)}")
    else:
        try:
            prompts = list(prompts)
        except TypeError:
            raise InputError(f"{argument} must be a list of strings or token ids; received {describe(prompts)}") from None
        id_lists = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if tokenizer is None:
                    raise InputError(f"{argument}[{i}] is a string but the model has no tokenizer; pass tokenizer=...")
                id_lists.append(list(tokenizer(p)["input_ids"]))
                continue
            ids = _ids_of(p)
            if ids is None:
                raise InputError(f"{argument}[{i}] must be a string or a sequence of token ids; received {describe(p)}")
            id_lists.append(ids)
    if not id_lists:
        raise InputError(f"{argument} must contain at least one prompt; received an empty list")
    for i, ids in enumerate(id_lists):
        if not ids:
            raise InputError(f"{argument}[{i}] has no tokens")
    return id_lists


def pad(id_lists: Sequence[Sequence[int]], fill_id: int, padding_side: str = "left") -> TokenBatch:
    """Pad id lists into a :class:`TokenBatch` (padding filled with ``fill_id``)."""
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be one of ('left', 'right'); received {padding_side!r}")
    seq = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), seq), fill_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), seq), dtype=torch.long)
    for r, ids in enumerate(id_lists):
        sl = slice(seq - len(ids), seq) if padding_side == "left" else slice(0, len(ids))
        input_ids[r, sl] = torch.as_tensor(ids, dtype=torch.long)
        mask[r, sl] = 1
    return TokenBatch(input_ids, mask, padding_side)


def encode(prompts, tokenizer, padding_side: str = "left", fill_id: int | None = None) -> TokenBatch:
    """Tokenize and pad prompts (with ``fill_id``, by default the tokenizer's :func:`pad_id`)."""
    return pad(as_id_lists(prompts, tokenizer), pad_id(tokenizer) if fill_id is None else fill_id, padding_side)


def pad_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    if tokenizer is None:
        return 0
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def columns(batch: TokenBatch, pos: int, *, rows: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Column of position ``pos`` in each row; raises if a prompt is too short."""
    lengths = batch.lengths if rows is None else batch.lengths[rows]
    first = batch.first if rows is None else batch.first[rows]
    if pos < 0:
        bad = lengths < -pos
        cols = first + lengths + pos
    else:
        bad = lengths <= pos
        cols = first + pos
    if bool(bad.any()):
        r = int(bad.nonzero()[0])
        raise beyond_prompt(pos, r + offset, int(lengths[r]))
    return cols


def token_labels(tokenizer, ids) -> list[str]:
    """Axis labels ``tok_i`` for a prompt's token ids (byte-level space markers shown as spaces)."""
    if tokenizer is None:
        return [f"{t}_{i}" for i, t in enumerate(ids)]
    toks = tokenizer.convert_ids_to_tokens(list(ids))
    return [f"{str(t).replace('Ġ', ' ').replace('▁', ' ')}_{i}" for i, t in enumerate(toks)]
