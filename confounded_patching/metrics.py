"""Outcome metrics: callables from last-position logits to one number per prompt.

A metric receives ``logits`` of shape ``[batch, vocab]`` (the logits at each
prompt's last real token) and returns a tensor of shape ``[batch]``. Metrics
that compare with the clean run (``kl_to_clean``) also receive
``clean_logits`` of the same shape. Token arguments may be strings (resolved
with the model's tokenizer when the metric is bound) or integer ids.

Example::

    >>> m = logit_diff(" he", " she").bind(tokenizer)
    >>> m(logits)            # tensor of shape [batch]

Any plain callable ``f(logits) -> [batch]`` is accepted wherever a metric is;
wrap it in :class:`Metric` to give it a name. A metric that needs the logits
at every position is made with :func:`full_logits`.

Metrics whose tokens differ from prompt to prompt: :func:`answer_logit_diff`
is the metric of datasets whose right answer depends on the prompt
(capitals, IOI): row ``i`` of the logits is scored as ``logit[answers[i]] −
logit[wrong_answers[i]]``. Its rows are aligned with the dataset's prompts,
so code that evaluates it on a chunk of prompts, or on several patched
copies of each prompt, first picks those rows with :meth:`RowMetric.take`
(repeated indices are allowed; :func:`evaluate` does it given ``rows=``)::

    >>> m = answer_logit_diff([" France", " Japan"], [" Japan", " France"]).bind(tok)
    >>> m(logits)                      # logits [2, vocab] -> tensor [2]
    >>> m.take([1, 1, 1])(logits3)     # three copies of prompt 1 -> tensor [3]

``RowMetric.per_row`` is ``True`` so callers can tell it apart from a metric
that is the same for every row. :func:`lexicon_logprob` scores the
next-token probability mass on a list of words.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .errors import InputError, describe
from .validation import check_finite_outcome, is_int

__all__ = ["Metric", "logit_diff", "prob_diff", "logit", "kl_to_clean", "full_logits", "as_metric", "resolve_token",
           "check_ids",
           "logits_request", "for_rows", "evaluate", "RowMetric", "answer_logit_diff", "LexiconMetric",
           "lexicon_logprob"]

TokenLike = "str | int"


def resolve_token(token, tokenizer) -> int:
    """Id of a single token given as an int id (>= 0) or a string that encodes to exactly one known token.

    A string the tokenizer does not know (it encodes to the unknown token, ``<unk>``) is refused: the
    metric would silently read the logit of ``<unk>``. Negative ids are refused too (they are not counted
    from the end of the vocabulary).
    """
    if is_int(token):
        if token < 0:
            raise InputError(f"token id must be >= 0 (negative ids are not counted from the end of the "
                             f"vocabulary); received {int(token)}")
        return int(token)
    if not isinstance(token, str):
        raise InputError(f"token must be a str or an int id; received {describe(token)}")
    if tokenizer is None:
        raise InputError(f"token {token!r} is a string but no tokenizer is available to resolve it; pass token ids")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(
            f"token {token!r} must encode to exactly one token; the tokenizer gives {len(ids)} ids {ids}"
        )
    if _is_unknown(int(ids[0]), token, tokenizer):
        raise InputError(f"token {token!r} is not in the tokenizer's vocabulary: it encodes to the unknown token "
                         f"{tokenizer.unk_token!r} (id {ids[0]}); give a word the tokenizer knows, or its id")
    return int(ids[0])


def _is_unknown(token_id: int, text: str, tokenizer) -> bool:
    """Whether ``text`` encoded to the tokenizer's unknown token without spelling it."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = getattr(tokenizer, "unk_token", None)
    return unk_id is not None and token_id == unk_id and (not unk or str(unk) not in text)


def check_ids(metric: "Metric", vocab_size: int | None, *, argument: str = "metric") -> None:
    """Raise if a bound metric reads a token id outside a vocabulary of ``vocab_size`` ids (None: no check)."""
    ids = metric.ids if metric.ids is not None else tuple(t for t in metric.tokens if is_int(t))
    if vocab_size is None or not ids:
        return
    bad = [int(t) for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"{argument} {metric.name!r} reads token id {bad[0]}, outside the model's vocabulary of "
                         f"{vocab_size} ids (valid: 0..{vocab_size - 1})")


@dataclass(frozen=True)
class Metric:
    """A named metric on last-position logits.

    Attributes:
        name: short name used in results and plot titles.
        fn: ``fn(logits, ids, clean_logits) -> [batch]`` where ``ids`` are the
            resolved token ids.
        tokens: tokens the metric reads (strings or ids), resolved by ``bind``.
        needs_clean: True if the metric compares with the clean run's logits.
        full: True if the metric reads every position: it is then called as
            ``fn(logits [batch, seq, vocab], attention_mask [batch, seq])``.
    """

    name: str
    fn: Callable
    tokens: tuple = ()
    needs_clean: bool = False
    ids: tuple | None = field(default=None, repr=False)
    full: bool = False

    def bind(self, tokenizer) -> "Metric":
        """Resolve string tokens to ids with ``tokenizer``; returns a new metric."""
        return replace(self, ids=tuple(resolve_token(t, tokenizer) for t in self.tokens))

    def __call__(self, logits: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.ids
        if ids is None:
            if any(not isinstance(t, int) for t in self.tokens):
                raise InputError(f"metric {self.name!r} has string tokens; call .bind(tokenizer) first")
            ids = self.tokens
        if self.needs_clean and clean_logits is None:
            raise InputError(f"metric {self.name!r} needs clean_logits")
        if ids and max(ids) >= logits.shape[-1]:
            check_ids(replace(self, ids=tuple(ids)), logits.shape[-1])
        return self.fn(logits, ids, clean_logits)


def _distinct(name: str, a, b) -> None:
    if type(a) is type(b) and a == b:
        raise InputError(f"{name}({a!r}, {b!r}) compares a token with itself: it is 0 for every prompt; give two "
                         "different tokens")


def logit_diff(a, b) -> Metric:
    """``logit[a] − logit[b]`` at the last position (the field's default metric)."""
    _distinct("logit_diff", a, b)
    return Metric(f"logit_diff({a!r}, {b!r})", lambda lg, ids, _: lg[:, ids[0]] - lg[:, ids[1]], (a, b))


def logit(a) -> Metric:
    """``logit[a]`` at the last position."""
    return Metric(f"logit({a!r})", lambda lg, ids, _: lg[:, ids[0]], (a,))


def prob_diff(a, b) -> Metric:
    """``p(a) − p(b)`` under the softmax of the last-position logits."""

    _distinct("prob_diff", a, b)

    def fn(lg, ids, _):
        p = torch.softmax(lg.float(), dim=-1)
        return p[:, ids[0]] - p[:, ids[1]]

    return Metric(f"prob_diff({a!r}, {b!r})", fn, (a, b))


def full_logits(fn: Callable, name: str | None = None) -> Metric:
    """A metric on the logits at every position.

    ``fn(logits, attention_mask) -> [batch]`` receives ``[batch, seq, vocab]``
    logits and the batch's ``[batch, seq]`` mask (padding may be on either
    side). Slower than last-position metrics: the model computes logits for
    every position.

    Example::

        >>> mean_entropy = full_logits(lambda lg, mask: (entropy(lg) * mask).sum(1) / mask.sum(1))
    """
    return Metric(name or getattr(fn, "__name__", "full_logits"), fn, full=True)


def logits_request(metric) -> bool | str:
    """What a forward pass must return for ``metric``: ``"full"`` logits or the last position's."""
    return "full" if getattr(metric, "full", False) else True


def kl_to_clean() -> Metric:
    """KL(clean ‖ run) of the next-token distributions; 0 when the run equals the clean run."""

    def fn(lg, ids, clean):
        lp = torch.log_softmax(lg.float(), dim=-1)
        lq = torch.log_softmax(clean.float(), dim=-1)
        return (lq.exp() * (lq - lp)).sum(-1)

    return Metric("kl_to_clean", fn, (), needs_clean=True)


def as_metric(metric, tokenizer=None, *, argument: str = "metric", vocab_size: int | None = None) -> Metric:
    """Normalise a user metric (a :class:`Metric` or a plain callable) and bind it.

    ``vocab_size``: the model's vocabulary; a metric reading an id outside it is refused here, before
    any forward pass.
    """
    if isinstance(metric, Metric):
        bound = metric.bind(tokenizer) if metric.tokens and metric.ids is None else metric
        check_ids(bound, vocab_size, argument=argument)
        return bound
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, lambda lg, ids, clean: metric(lg))
    raise InputError(f"{argument} must be a callable on logits [batch, vocab] -> [batch]; received {describe(metric)}")


def for_rows(metric: Metric, rows) -> Metric:
    """The metric for a batch whose row ``r`` is prompt ``rows[r]`` (per-row metrics pick their rows)."""
    if getattr(metric, "per_row", False):
        return metric.take([int(r) for r in rows])
    return metric


def evaluate(metric: Metric, logits: torch.Tensor, clean_logits=None, *, argument: str = "metric",
             rows=None, mask=None) -> torch.Tensor:
    """Call ``metric`` (on prompts ``rows`` for per-row metrics) and check it returned one value per row."""
    if rows is not None:
        metric = for_rows(metric, rows)
    out = metric.fn(logits, mask) if getattr(metric, "full", False) else metric(logits, clean_logits)
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{argument} {metric.name!r} must return a tensor of shape [batch] = [{logits.shape[0]}]; "
                             f"received {describe(out)}") from None
    if out.shape != (logits.shape[0],):
        raise InputError(
            f"{argument} must return a tensor of shape [batch] = [{logits.shape[0]}] for logits of shape "
            f"{tuple(logits.shape)}; received {describe(out)}"
        )
    if out.dtype.is_complex or not (out.dtype.is_floating_point or out.dtype in _REAL_INTS):
        raise InputError(f"{argument} {metric.name!r} must return real numbers; received {describe(out)}")
    check_finite_outcome(out, metric.name, rows=rows, argument=argument)
    return out.float()


_REAL_INTS = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ----------------------------------------------------------------------------- per-prompt and lexicon metrics


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
    known token under the tokenizer and drops the others (a word split into
    pieces has no single next-token probability; a word the tokenizer does
    not know would read its unknown token); it fails only if none is left.
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
            if len(encoded) == 1 and not _is_unknown(int(encoded[0]), token, tokenizer):
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
