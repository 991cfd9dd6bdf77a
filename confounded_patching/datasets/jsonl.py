"""Users' own prompt sets from JSON Lines files.

One JSON object per line::

    {"prompt": "The nurse said that", "topic": "care", "corrupt": "The woman said that"}
    {"prompt": "Paris is in", "topic": "Europe", "answer": " France", "wrong_answer": " Brazil"}

Keys (only ``prompt`` is required):

====================  =====================================================
``prompt``            str, the prompt
``topic``             str, its topic (the confounder)
``label``             int, float or bool, its outcome label
``clean``             str, the clean prompt of a pair (default: ``prompt``)
``corrupt``           str, the corrupt prompt of a pair
``answer``            str, the token the metric favours (e.g. " France")
``wrong_answer``      str, the token it is compared with
====================  =====================================================

An optional key is given on every line or on none; ``clean`` needs
``corrupt``; ``answer`` and ``wrong_answer`` go together, and make the
metric ``logit[answer] − logit[wrong_answer]`` (one metric for all rows when
every line has the same pair, a per-row metric otherwise). Blank lines are
skipped. A key given twice in one object is an error (JSON parsers
otherwise keep the last value silently). Every problem is reported as an
``InputError`` that starts with ``file:line:``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import InputError, describe
from ..metrics import logit_diff
from ._base import PromptSet

__all__ = ["from_jsonl", "JSONL_KEYS"]

#: key -> (PromptSet field, accepted types, description for messages)
JSONL_KEYS = {
    "prompt": ("prompts", (str,), "a non-empty string"),
    "topic": ("topics", (str,), "a string"),
    "label": ("labels", (int, float), "a finite number (int, float or bool)"),
    "clean": ("clean", (str,), "a non-empty string"),
    "corrupt": ("corrupt", (str,), "a non-empty string"),
    "answer": ("answers", (str,), "a non-empty string"),
    "wrong_answer": ("wrong_answers", (str,), "a non-empty string"),
}


def _check_value(where: str, key: str, value):
    _, types, expected = JSONL_KEYS[key]
    if isinstance(value, bool) and key == "label":
        return int(value)
    ok = isinstance(value, types) and not isinstance(value, bool)
    if ok and isinstance(value, str) and key != "topic" and not value.strip():
        ok = False
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise InputError(f"{where}: {key!r} must be {expected}; received {describe(value)}")
    return value


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list) -> dict:
    """``object_pairs_hook`` for ``json.loads``: a dict, refusing a key given twice."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _parse_line(where: str, line: str):
    """One JSON value; InputError starting with ``where`` for invalid JSON or a key given twice."""
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    except _DuplicateKey as dup:
        raise InputError(f"{where}: key {dup.key!r} is given twice in one object; give each key once "
                         "(JSON readers would silently keep the last value)") from None


def from_jsonl(path: str | os.PathLike, *, name: str | None = None, tokenizer=None,
               ignore_unknown: bool = False) -> PromptSet:
    """Read a prompt set from a JSON Lines file (format in the module docstring).

    Args:
        path: the ``.jsonl`` file.
        name: the set's name (default: the file name without its suffix).
        tokenizer: if given, keep only clean/corrupt pairs of equal token length under it.
        ignore_unknown: skip keys not listed in ``JSONL_KEYS`` instead of failing
            (by default an unknown key is an error, since it is usually a typo).

    Returns:
        A :class:`PromptSet`, rows in file order.

    Example::

        >>> data = from_jsonl("my_prompts.jsonl")
        >>> data.prompts[:2], data.topics[:2]
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InputError(f"from_jsonl: path must be a file path (str or os.PathLike); received {describe(path)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"from_jsonl: {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows: list[tuple[int, dict]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = _parse_line(where, line)
        if not isinstance(obj, dict):
            raise InputError(f"{where}: each line must be a JSON object like {{\"prompt\": \"...\"}}; "
                             f"received {describe(obj)}")
        unknown = [k for k in obj if k not in JSONL_KEYS]
        if unknown and not ignore_unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; expected keys {tuple(JSONL_KEYS)} "
                             "(pass ignore_unknown=True to skip other keys)")
        if "prompt" not in obj:
            raise InputError(f"{where}: missing required key 'prompt'")
        row = {k: _check_value(where, k, v) for k, v in obj.items() if k in JSONL_KEYS}
        if "clean" in row and "corrupt" not in row:
            raise InputError(f"{where}: 'clean' is given without 'corrupt'")
        if ("answer" in row) != ("wrong_answer" in row):
            raise InputError(f"{where}: 'answer' and 'wrong_answer' go together; give both or neither")
        rows.append((lineno, row))
    if not rows:
        raise InputError(f"{path}: the file has no prompts (it is empty or blank); expected one JSON object "
                         "per line with at least a \"prompt\" key")

    # Optional keys: on every line or on none ("clean" may be left out: it defaults to the prompt).
    first_line, first = rows[0]
    for key in JSONL_KEYS:
        if key in ("prompt", "clean"):
            continue
        for lineno, row in rows:
            if (key in row) != (key in first):
                has, lacks = (first_line, lineno) if key in first else (lineno, first_line)
                raise InputError(f"{path}:{lineno}: {key!r} is on line {has} but not on line {lacks}; "
                                 "give it on every line or on none")
    columns = {field: None for field, _, _ in JSONL_KEYS.values()}
    for key, (field, _, _) in JSONL_KEYS.items():
        if key in first:
            columns[field] = [row[key] for _, row in rows]
    if columns["corrupt"] is not None:
        columns["clean"] = [row.get("clean", row["prompt"]) for _, row in rows]
    metric = None
    if columns["answers"] is not None and len(set(zip(columns["answers"], columns["wrong_answers"]))) == 1:
        metric = logit_diff(columns["answers"][0], columns["wrong_answers"][0])
    data = PromptSet(
        name=path.stem if name is None else name,
        **columns,
        metric=metric,
        description=f"Read from {path} ({len(rows)} prompts).",
    )
    if tokenizer is not None and data.has_pairs:
        data = data.filter_equal_length(tokenizer)
    return data
