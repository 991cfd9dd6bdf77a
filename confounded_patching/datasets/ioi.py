"""Indirect-object identification (IOI), in the style of Wang et al. (2023).

Wang, Variengien, Conmy, Shlegeris & Steinhardt, "Interpretability in the
Wild: a Circuit for Indirect Object Identification in GPT-2 small", ICLR 2023:
in "When Mary and John went to the store, John gave a drink to" the model
should continue with the indirect object " Mary", not the repeated subject
" John". This module writes its own templates, places, objects and names:

- ``answers`` = the indirect object (" Mary"), ``wrong_answers`` = the subject
  (" John"); the metric ``logit[IO] − logit[S]`` is per row;
- topic: the family of the place in the template (errands, outdoors, work);
- corrupt prompt, ``corruption="swap"`` (default): the second clause names
  the other person ("…, Mary gave a drink to"), which flips the answer; with
  ``corruption="abc"`` it names a third person instead ("…, Lucy gave a drink
  to"), which removes the repeated name (Wang et al.'s ABC distribution).

Both name orders occur (ABBA and BABA). All names are one token after a
space under SmolLM2's and GPT-2's tokenizers, so the swap corruption keeps
the token length by construction.
"""

from __future__ import annotations

import random

from ..errors import InputError, describe
from ._base import PromptSet, check_seed, n_tokens
from .words import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, IOI_TEMPLATES

__all__ = ["ioi"]

CORRUPTIONS = ("swap", "abc")


def ioi(n: int | None = 500, seed: int = 0, tokenizer=None, *, corruption: str = "swap") -> PromptSet:
    """IOI prompts "When Mary and John went to the store, John gave a drink to", scored by logit(IO) − logit(S).

    Args:
        n: number of distinct prompts (``None``: 500). Rows are drawn one by one
            with ``random.Random(seed)``: template, place, object, two names, order.
        seed: the same seed gives the same set.
        tokenizer: if given, a drawn pair whose clean and corrupt prompts differ
            in token length is dropped and another is drawn (``n_dropped`` counts them).
        corruption: ``"swap"`` (the other name in the second clause) or ``"abc"``
            (a third name there).

    Returns:
        A :class:`PromptSet` with topics (place families), pairs, per-row
        ``answers`` (indirect object) and ``wrong_answers`` (subject) and a
        per-row metric.

    Example::

        >>> d = ioi(n=2)
        >>> d.clean[0], d.corrupt[0]
        ('Tom and Robert spent the afternoon at the hospital. Later, Robert gave a cake to',
         'Tom and Robert spent the afternoon at the hospital. Later, Tom gave a cake to')
        >>> d.answers[0], d.wrong_answers[0]
        (' Tom', ' Robert')
    """
    seed = check_seed(seed)
    if corruption not in CORRUPTIONS:
        raise InputError(f"corruption must be one of {CORRUPTIONS}; received {describe(corruption)}")
    if n is None:
        n = 500
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive int or None; received {describe(n)}")
    rng = random.Random(seed)
    places = [(topic, place) for topic, ps in IOI_PLACES.items() for place in ps]
    rows: dict[str, tuple] = {}
    rejected: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise InputError(
                f"ioi: could not make {n} distinct prompts of equal token length ({len(rows)} made, {len(rejected)} "
                "pairs dropped for unequal length); ask for fewer"
            )
        template = rng.choice(IOI_TEMPLATES)
        topic, place = rng.choice(places)
        obj = rng.choice(IOI_OBJECTS)
        io, s, c = rng.sample(IOI_NAMES, 3)
        a, b = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA or BABA order
        clean = template.format(a=a, b=b, s=s, place=place, obj=obj)
        if clean in rows or clean in rejected:
            continue
        corrupt = template.format(a=a, b=b, s=io if corruption == "swap" else c, place=place, obj=obj)
        if tokenizer is not None and n_tokens(tokenizer, clean) != n_tokens(tokenizer, corrupt):
            rejected.add(clean)
            continue
        rows[clean] = (topic, corrupt, " " + io, " " + s)
    prompts = list(rows)
    topics, corrupt, answers, wrong = (list(col) for col in zip(*rows.values()))
    return PromptSet(
        name="ioi",
        prompts=prompts,
        topics=topics,
        clean=prompts,
        corrupt=corrupt,
        answers=answers,
        wrong_answers=wrong,
        n_dropped=len(rejected),
        description=(
            f"Indirect-object identification (after Wang et al. 2023): {len(IOI_TEMPLATES)} templates, "
            f"{len(places)} places in {len(IOI_PLACES)} families (topics), {len(IOI_NAMES)} names; "
            f"corruption {corruption!r}; metric logit(indirect object) - logit(subject), per row."
        ),
    )
