"""``PromptSet``: the one result type of every dataset, and the equal-length filter.

A prompt set is a table with one row per prompt. Every field that holds rows
is a tuple of the same length; optional columns are ``None`` when a set does
not have them. Rows stay aligned through :meth:`PromptSet.take`,
:meth:`PromptSet.subset` and :meth:`PromptSet.filter_equal_length`, and so
does a per-row metric (:class:`~confounded_patching.datasets.RowMetric`).

Example::

    >>> data = professions(n=4)
    >>> len(data), data.prompts[0], data.corrupt[0]
    (4, 'The grocer told the reporter that', 'The woman told the reporter that')
    >>> data.to_dataframe().columns.tolist()
    ['row', 'prompt', 'topic', 'label', 'clean', 'corrupt', 'answer', 'wrong_answer']
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError, describe
from ..metrics import Metric, RowMetric, answer_logit_diff
from ..results import atomic_write

__all__ = ["PromptSet", "n_tokens"]

# Row columns, in the order of to_dataframe() and of the keys in to_jsonl().
_ROWS = ("prompts", "topics", "labels", "clean", "corrupt", "answers", "wrong_answers")
_JSON_KEY = {"prompts": "prompt", "topics": "topic", "labels": "label", "clean": "clean",
             "corrupt": "corrupt", "answers": "answer", "wrong_answers": "wrong_answer"}


def n_tokens(tokenizer, text: str) -> int:
    """Number of tokens of ``text`` without special tokens (BOS would add one to both sides of a pair)."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a tokenizers.Tokenizer or another encoder without that keyword
        ids = tokenizer.encode(text)
    return len(getattr(ids, "ids", ids))


@dataclass(frozen=True)
class PromptSet:
    """Prompts with optional topics, labels, clean/corrupt pairs and answers; one row per prompt.

    Attributes:
        name: the set's name (``"professions"``, ``"capitals"``, a file stem...).
        prompts: the prompts, as given to the model (for built-in sets, equal to ``clean``).
        topics: one topic label per prompt (the confounder), or ``None``.
        labels: one outcome label per prompt (int or float), or ``None``; e.g. set
            from a model's continuations with :meth:`with_labels`.
        clean: the clean prompt of each pair, or ``None`` when the set has no pairs.
        corrupt: the corrupted prompt of each pair (same token length as ``clean``
            when the set was filtered with a tokenizer), or ``None``.
        answers: the token the metric favours, per prompt (e.g. ``" France"``), or ``None``.
        wrong_answers: the token it compares with, per prompt, or ``None``.
        metric: default outcome metric (a :class:`~confounded_patching.metrics.Metric`);
            not compared by ``==`` and not written by :meth:`to_jsonl`.
        description: one paragraph on how the set was made.
        n_dropped: candidate pairs removed because clean and corrupt had different
            token lengths under the tokenizer the set was filtered with (0 if none).
    """

    name: str
    prompts: tuple
    topics: tuple | None = None
    labels: tuple | None = None
    clean: tuple | None = None
    corrupt: tuple | None = None
    answers: tuple | None = None
    wrong_answers: tuple | None = None
    metric: Metric | None = field(default=None, compare=False, repr=False)
    description: str = field(default="", compare=False)
    n_dropped: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InputError(f"name must be a str; received {describe(self.name)}")
        for column in _ROWS:
            value = getattr(self, column)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise InputError(f"{column} must be a sequence with one entry per prompt; received {describe(value)}")
            object.__setattr__(self, column, tuple(value))
        n = len(self.prompts)
        if n == 0:
            raise InputError(f"prompt set {self.name!r} has no prompts")
        for column in _ROWS:
            value = getattr(self, column)
            if value is not None and len(value) != n:
                raise InputError(f"{column} must have one entry per prompt ({n}); received {len(value)}")
            if value is not None and column != "labels":
                bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
                if bad:
                    raise InputError(f"{column} must hold strings; row {bad[0]} is {describe(value[bad[0]])}")
        for a, b in (("clean", "corrupt"), ("answers", "wrong_answers")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise InputError(f"{a} and {b} go together: give both or neither")
        if self.labels is not None:
            object.__setattr__(self, "labels", _check_labels(self.labels))
        if self.metric is None and self.answers is not None:
            object.__setattr__(self, "metric", answer_logit_diff(self.answers, self.wrong_answers))

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", f"n={len(self)}"]
        if self.topics is not None:
            parts.append(f"topics={sorted(set(self.topics))}")
        parts.append(f"pairs={self.clean is not None}")
        parts.append(f"labels={self.labels is not None}")
        if self.metric is not None:
            parts.append(f"metric={self.metric.name!r}")
        if self.n_dropped:
            parts.append(f"n_dropped={self.n_dropped}")
        return f"PromptSet({', '.join(parts)})"

    @property
    def has_pairs(self) -> bool:
        """True when the set has clean/corrupt pairs."""
        return self.clean is not None

    def take(self, rows: Sequence[int]) -> "PromptSet":
        """The rows ``rows`` in that order (a per-row metric follows along)."""
        n = len(self)
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < n]
        if bad:
            raise InputError(f"rows must be in [0, {n}); received {bad[:5]}")
        if not rows:
            raise InputError("rows must select at least one prompt")
        new = {c: None if getattr(self, c) is None else tuple(getattr(self, c)[r] for r in rows) for c in _ROWS}
        metric = self.metric.take(rows) if isinstance(self.metric, RowMetric) else self.metric
        return dataclasses.replace(self, **new, metric=metric)

    def subset(self, n: int, seed: int = 0) -> "PromptSet":
        """``n`` rows drawn without replacement with ``random.Random(seed)``, kept in their original order."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be a positive int; received {describe(n)}")
        if n > len(self):
            raise InputError(f"n={n} is more than the {len(self)} prompts of {self.name!r}")
        rows = sorted(random.Random(seed).sample(range(len(self)), n))
        return self.take(rows)

    def filter_equal_length(self, tokenizer) -> "PromptSet":
        """Keep the pairs whose clean and corrupt prompts have the same number of tokens.

        The count of removed pairs is added to ``n_dropped``.
        """
        if not self.has_pairs:
            raise InputError(f"prompt set {self.name!r} has no clean/corrupt pairs to compare")
        pairs = enumerate(zip(self.clean, self.corrupt))
        keep = [i for i, (c, k) in pairs if n_tokens(tokenizer, c) == n_tokens(tokenizer, k)]
        if not keep:
            raise InputError(
                f"none of the {len(self)} clean/corrupt pairs of {self.name!r} have equal token lengths under "
                f"this tokenizer; e.g. {self.clean[0]!r} vs {self.corrupt[0]!r}"
            )
        out = self.take(keep) if len(keep) < len(self) else self
        return dataclasses.replace(out, n_dropped=self.n_dropped + len(self) - len(keep))

    def with_labels(self, labels: Sequence) -> "PromptSet":
        """A copy with ``labels`` (one int or float per prompt), e.g. from :func:`label_continuations`."""
        return dataclasses.replace(self, labels=tuple(labels) if labels is not None else None)

    # ------------------------------------------------------------------ export
    def to_dataframe(self):
        """Long-form ``pandas.DataFrame``: one row per prompt, missing columns as ``None``."""
        import pandas as pd

        data = {"row": list(range(len(self)))}
        for column in _ROWS:
            value = getattr(self, column)
            data[_JSON_KEY[column]] = list(value) if value is not None else [None] * len(self)
        return pd.DataFrame(data)

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write one JSON object per prompt, the format :func:`from_jsonl` reads. Returns the path.

        Columns that are ``None`` are left out; the metric is not written, but
        ``answer``/``wrong_answer`` are, and ``from_jsonl`` rebuilds the
        logit-difference metric from them.
        """
        present = [c for c in _ROWS if getattr(self, c) is not None]
        if self.clean is not None and self.clean == self.prompts:
            present.remove("clean")  # from_jsonl takes clean = prompt when only corrupt is given
        lines = []
        for i in range(len(self)):
            lines.append(json.dumps({_JSON_KEY[c]: getattr(self, c)[i] for c in present}, ensure_ascii=False))
        text = "\n".join(lines) + "\n"

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        return atomic_write(path, write)


def _check_labels(labels: tuple) -> tuple:
    out = []
    for i, v in enumerate(labels):
        if isinstance(v, bool):
            v = int(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalars
            v = v.item()
        if isinstance(v, bool):
            v = int(v)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"labels must be finite numbers (int, float or bool); row {i} is {describe(v)}")
        out.append(v)
    return tuple(out)


def finish(pool: PromptSet, n: int | None, seed: int, tokenizer) -> PromptSet:
    """Filter a generated pool by token length (if a tokenizer is given), then draw ``n`` rows."""
    if tokenizer is not None:
        pool = pool.filter_equal_length(tokenizer)
    if n is None:
        return pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive int or None (all); received {describe(n)}")
    if n > len(pool):
        raise InputError(
            f"{pool.name}: n={n} is more than the {len(pool)} distinct prompts it can make"
            + (f" ({pool.n_dropped} pairs were dropped for unequal token length)" if pool.n_dropped else "")
            + "; ask for fewer or pass n=None for all"
        )
    return pool.subset(n, seed)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int; received {describe(seed)}")
    return seed
