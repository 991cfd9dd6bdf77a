"""A lexicon-based labeler for a rare binary behaviour: hostile continuations.

A continuation is labelled 1 ("hostile") when it contains an entry of a small
hand-written lexicon of mild insults and hostile phrases, shipped with the
package as ``hostile_words.txt`` (read it for the list and the rules that
chose it), and 0 otherwise. Matching is case-insensitive on whole words; a
word entry also matches its plural or third-person form with a trailing
"s"/"es"; an entry with spaces ("shut up") matches consecutive words.

This is a deliberately simple, transparent labeler — the kind of label
studies of toxicity often start from — not a classifier. It does not see
negation ("you are not stupid" is labelled 1), sarcasm or context. It exists
to give the estimator a binary outcome that comes from generation.

Example::

    >>> label_text("You are such an idiot!")
    1
    >>> label_text("You are such a good cook.")
    0
    >>> Labeler().matches("Shut up, you fools")
    ['shut up', 'fool']
    >>> label_continuations(["Idiots.", "Thanks!"])
    (1, 0)
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, describe

__all__ = ["Labeler", "label_text", "label_continuations", "load_lexicon", "LEXICON_FILE"]

LEXICON_FILE = "hostile_words.txt"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def load_lexicon(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Entries of a lexicon file (default: the shipped ``hostile_words.txt``), lower-cased, in file order."""
    if path is None:
        text = resources.files(__package__).joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    entries = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip().lower()
        if entry:
            entries.append(" ".join(entry.split()))
    return tuple(dict.fromkeys(entries))


class Labeler:
    """Label texts 1 if they contain a lexicon entry, else 0.

    Args:
        entries: lexicon entries (words or phrases); default the shipped lexicon.
        extra: entries added to ``entries``.
        exclude: entries removed from ``entries``.
    """

    def __init__(self, entries: Iterable[str] | None = None, *, extra: Iterable[str] = (), exclude: Iterable[str] = ()):
        base = load_lexicon() if entries is None else tuple(entries)
        for name, group in (("entries", base), ("extra", tuple(extra)), ("exclude", tuple(exclude))):
            bad = [e for e in group if not isinstance(e, str) or not _WORD.search(e.lower())]
            if bad:
                raise InputError(f"{name} must be words or phrases; received {describe(bad[0])}")
        drop = {" ".join(e.lower().split()) for e in exclude}
        self.entries = tuple(
            e for e in dict.fromkeys(" ".join(x.lower().split()) for x in (*base, *extra)) if e not in drop
        )
        if not self.entries:
            raise InputError("the lexicon is empty: give at least one entry")
        self._words = frozenset(e for e in self.entries if " " not in e)
        self._phrases = tuple(tuple(e.split()) for e in self.entries if " " in e)

    def __repr__(self) -> str:
        return f"Labeler({len(self.entries)} entries)"

    def _word_entry(self, word: str) -> str | None:
        if word in self._words:
            return word
        for suffix in ("es", "s"):
            if word.endswith(suffix) and word[: -len(suffix)] in self._words:
                return word[: -len(suffix)]
        return None

    def matches(self, text: str) -> list[str]:
        """The lexicon entries found in ``text``, in order of appearance (each once)."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str; received {describe(text)}")
        words = _WORD.findall(text.lower())
        found: dict[int, str] = {}
        for phrase in self._phrases:
            k = len(phrase)
            for i in range(len(words) - k + 1):
                if tuple(words[i : i + k]) == phrase:
                    found.setdefault(i, " ".join(phrase))
        for i, word in enumerate(words):
            entry = self._word_entry(word)
            if entry is not None:
                found.setdefault(i, entry)
        return list(dict.fromkeys(found[i] for i in sorted(found)))

    def __call__(self, text: str) -> int:
        """1 if ``text`` contains a lexicon entry, else 0."""
        return int(bool(self.matches(text)))

    def label_many(self, texts: Sequence[str]) -> tuple[int, ...]:
        """One label per text."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings, not one string")
        return tuple(self(t) for t in texts)


@functools.lru_cache(maxsize=1)
def _default() -> Labeler:
    return Labeler()


def label_text(text: str, labeler: Labeler | None = None) -> int:
    """1 if ``text`` contains an entry of the shipped hostile-word lexicon (or of ``labeler``'s), else 0."""
    return (labeler or _default())(text)


def label_continuations(texts: Sequence[str], labeler: Labeler | None = None) -> tuple[int, ...]:
    """Labels of a model's continuations, one per prompt, ready for ``PromptSet.with_labels``.

    Example::

        >>> data = topic_toxicity()
        >>> texts = [...]                       # greedy continuations, one per data.prompts[i]
        >>> data = data.with_labels(label_continuations(texts))
    """
    return (labeler or _default()).label_many(texts)
