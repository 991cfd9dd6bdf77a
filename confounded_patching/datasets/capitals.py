"""Factual recall of a city's country, in the style of the nnsight tutorials.

The nnsight activation-patching tutorial contrasts "Paris is in the country
of" with "Rio is in the country of": the clean and corrupt prompts differ only
in the city, and the metric is the logit difference between the two answers.
This module writes its own templates and a list of 62 cities, each paired with
its country:

- clean prompt: a template with a city, e.g. "The city of Paris is in the country of";
- corrupt prompt: the same template with a city of another country (drawn
  with the seed), e.g. "The city of Rio is in the country of";
- ``answers``/``wrong_answers``: the clean and the corrupt city's country
  (" France" / " Brazil"), so the metric ``logit[answer] − logit[wrong]`` is
  per row (a :class:`~confounded_patching.datasets.RowMetric`);
- topic: the continent of the clean city.

Every city is one token after a space under SmolLM2's tokenizer and under
GPT-2's, and every country is one token after a space. At the very start of
a text (no leading space) most city names split into several tokens, which
is why each template puts a word before the city.
"""

from __future__ import annotations

import random

from ._base import PromptSet, check_seed, finish
from .words import CAPITAL_TEMPLATES, CITIES

__all__ = ["capitals"]

def capitals(n: int | None = None, seed: int = 0, tokenizer=None) -> PromptSet:
    """Prompts like "The city of Paris is in the country of", scored by logit(country) − logit(other country).

    Args:
        n: number of prompts drawn from the 6 × 62 = 372 the templates make (``None``: all).
        seed: seed of the corrupt cities and of the draw.
        tokenizer: if given, keep only pairs of equal token length under it.

    Returns:
        A :class:`PromptSet` with topics (continents), pairs, per-row
        ``answers``/``wrong_answers`` (" France" / " Brazil") and a per-row
        metric :func:`answer_logit_diff`.

    Example::

        >>> d = capitals()
        >>> d.clean[0], d.corrupt[0], d.answers[0], d.wrong_answers[0]
        ('The city of Paris is in the country of', 'The city of Sydney is in the country of', ' France', ' Australia')
    """
    seed = check_seed(seed)
    rng = random.Random(seed)
    cities = [(city, country, continent) for continent, rows in CITIES.items() for city, country in rows]
    prompts, topics, corrupt, answers, wrong = [], [], [], [], []
    for template in CAPITAL_TEMPLATES:
        for city, country, continent in cities:
            other_city, other_country, _ = rng.choice([c for c in cities if c[1] != country])
            prompts.append(template.format(city))
            corrupt.append(template.format(other_city))
            topics.append(continent)
            answers.append(" " + country)
            wrong.append(" " + other_country)
    pool = PromptSet(
        name="capitals",
        prompts=prompts,
        topics=topics,
        clean=prompts,
        corrupt=corrupt,
        answers=answers,
        wrong_answers=wrong,
        description=(
            f"Factual recall (after the nnsight patching tutorial): {len(CAPITAL_TEMPLATES)} templates x "
            f"{len(cities)} cities on {len(CITIES)} continents (topics); the corrupt prompt names a city of "
            "another country; metric logit(country) - logit(corrupt city's country), per row."
        ),
    )
    return finish(pool, n, seed, tokenizer)
