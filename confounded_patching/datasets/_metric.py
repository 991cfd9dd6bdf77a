"""Metrics whose tokens differ from prompt to prompt, and a lexicon metric.

:func:`answer_logit_diff` is the metric of datasets whose right answer
depends on the prompt (capitals, IOI): row ``i`` of the logits is scored as
``logit[answers[i]] − logit[wrong_answers[i]]``. Its rows are aligned with the
dataset's prompts, so code that evaluates it on a chunk of prompts, or on
several patched copies of each prompt, first picks those rows with
:meth:`RowMetric.take` (repeated indices are allowed)::

    >>> m = answer_logit_diff([" France", " Japan"], [" Japan", " France"]).bind(tok)
    >>> m(logits)                      # logits [2, vocab] -> tensor [2]
    >>> m.take([1, 1, 1])(logits3)     # three copies of prompt 1 -> tensor [3]

``RowMetric.per_row`` is ``True`` so callers can tell it apart from a metric
that is the same for every row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..errors import InputError, describe
from ..metrics import Metric

__all__ = ["RowMetric", "answer_logit_diff", "LexiconMetric", "lexicon_logprob"]


def _row_logit_diff(logits: torch.Tensor, ids, _clean) -> torch.Tensor:
    n = len(ids) // 2
    if logits.ndim != 2 or logits.shape[0] != n:
        raise InputError(
            f"this per-prompt metric scores {n} rows (one per prompt) but received logits of shape "
            f"{tuple(logits.shape)}; evaluate it on the rows it was built for, or call "
            f".take(row_indices) first to select the prompts of a chunk"
        )
    rows = torch.arange(n, device=logits.device)
    right = torch.as_tensor(ids[:n], device=logits.device)
    wrong = torch.as_tensor(ids[n:], device=logits.device)
    return logits[rows, right] - logits[rows, wrong]


@dataclass(frozen=True)
class RowMetric(Metric):
    """A logit difference with one (answer, wrong answer) pair per row.

    ``tokens`` holds the answers followed by the wrong answers, so
    :meth:`Metric.bind` resolves all of them; each must be a single token.
    """

    per_row = True

    @property
    def n_rows(self) -> int:
        """Number of rows (prompts) the metric scores."""
        return len(self.tokens) // 2

    @property
    def answers(self) -> tuple:
        return tuple(self.tokens[: self.n_rows])

    @property
    def wrong_answers(self) -> tuple:
        return tuple(self.tokens[self.n_rows :])

    def take(self, rows: Sequence[int]) -> "RowMetric":
        """The metric for the prompts ``rows`` (in that order; repeats allowed)."""
        n = self.n_rows
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not -n <= r < n]
        if bad:
            raise InputError(f"rows must index the metric's {n} prompts; received out-of-range {bad[:5]}")
        pick = lambda seq: tuple(seq[r] for r in rows) + tuple(seq[n + r] for r in rows)  # noqa: E731
        ids = None if self.ids is None else pick(self.ids)
        return replace(self, tokens=pick(self.tokens), ids=ids)


def answer_logit_diff(answers: Sequence, wrong_answers: Sequence, *, name: str = "answer_logit_diff") -> RowMetric:
    """Per-prompt ``logit[answers[i]] − logit[wrong_answers[i]]`` at the last position.

    Args:
        answers: one token per prompt (a string that encodes to one token, or an id).
        wrong_answers: one token per prompt, same length as ``answers``.

    Returns:
        A :class:`RowMetric`; call ``.bind(tokenizer)`` before use when tokens are strings.
    """
    answers, wrong_answers = tuple(answers), tuple(wrong_answers)
    if len(answers) != len(wrong_answers):
        raise InputError(
            f"answers and wrong_answers must have one entry per prompt; received {len(answers)} answers "
            f"and {len(wrong_answers)} wrong_answers"
        )
    if not answers:
        raise InputError("answers must not be empty")
    return RowMetric(name, _row_logit_diff, answers + wrong_answers)


def _lexicon_logprob(logits: torch.Tensor, ids, _clean) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(logp[:, list(ids)], dim=-1)


@dataclass(frozen=True)
class LexiconMetric(Metric):
    """``log Σ_w p(w)`` over the words of a lexicon that are single tokens.

    Unlike :class:`Metric`, binding keeps the words that encode to exactly one
    token under the tokenizer and drops the others (a word split into pieces
    has no single next-token probability); it fails only if none is left.
    """

    def bind(self, tokenizer) -> "LexiconMetric":
        if tokenizer is None:
            raise InputError(f"metric {self.name!r} needs a tokenizer to resolve its words")
        ids = []
        for token in self.tokens:
            if isinstance(token, int):
                ids.append(token)
                continue
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) == 1:
                ids.append(int(encoded[0]))
        if not ids:
            raise InputError(
                f"metric {self.name!r}: none of its {len(self.tokens)} words is a single token under this "
                f"tokenizer (e.g. {self.tokens[:3]})"
            )
        return replace(self, ids=tuple(dict.fromkeys(ids)))


def lexicon_logprob(words: Sequence[str], *, name: str = "hostile_logprob") -> LexiconMetric:
    """Log of the next-token probability mass on ``words`` (each given with its leading space)."""
    words = tuple(words)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise InputError(f"words must be a non-empty sequence of non-empty strings; received {describe(words)}")
    return LexiconMetric(name, _lexicon_logprob, words)
