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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .errors import InputError, describe

__all__ = ["Metric", "logit_diff", "prob_diff", "logit", "kl_to_clean", "full_logits", "as_metric", "resolve_token"]

TokenLike = "str | int"


def resolve_token(token, tokenizer) -> int:
    """Id of a single token given as an int or a string that encodes to exactly one token."""
    if isinstance(token, bool):
        raise InputError(f"token must be a str or an int id; received {token!r}")
    if isinstance(token, int):
        return token
    if not isinstance(token, str):
        raise InputError(f"token must be a str or an int id; received {describe(token)}")
    if tokenizer is None:
        raise InputError(f"token {token!r} is a string but no tokenizer is available to resolve it; pass token ids")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(
            f"token {token!r} must encode to exactly one token; the tokenizer gives {len(ids)} ids {ids}"
        )
    return int(ids[0])


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
        return self.fn(logits, ids, clean_logits)


def logit_diff(a, b) -> Metric:
    """``logit[a] − logit[b]`` at the last position (the field's default metric)."""
    return Metric(f"logit_diff({a!r}, {b!r})", lambda lg, ids, _: lg[:, ids[0]] - lg[:, ids[1]], (a, b))


def logit(a) -> Metric:
    """``logit[a]`` at the last position."""
    return Metric(f"logit({a!r})", lambda lg, ids, _: lg[:, ids[0]], (a,))


def prob_diff(a, b) -> Metric:
    """``p(a) − p(b)`` under the softmax of the last-position logits."""

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


def as_metric(metric, tokenizer=None, *, argument: str = "metric") -> Metric:
    """Normalise a user metric (a :class:`Metric` or a plain callable) and bind it."""
    if isinstance(metric, Metric):
        return metric.bind(tokenizer) if metric.tokens and metric.ids is None else metric
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
        out = torch.as_tensor(out)
    if out.shape != (logits.shape[0],):
        raise InputError(
            f"{argument} must return a tensor of shape [batch] = [{logits.shape[0]}] for logits of shape "
            f"{tuple(logits.shape)}; received {describe(out)}"
        )
    return out.float()
