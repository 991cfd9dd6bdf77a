"""Gender bias of professions, in the style of Vig et al. (2020).

Vig, Gehrmann, Belinkov, Qian, Nevo, Singer & Shieber, "Investigating Gender
Bias in Language Models Using Causal Mediation Analysis", NeurIPS 2020, ask
how strongly a model continues "The nurse said that" with " he" versus
" she", and which components carry that bias. This module writes its own
templates and profession list (nothing is copied from their data):
20 templates × 108 professions = 2,160 distinct prompts.

- outcome metric: ``logit(" he") − logit(" she")`` at the last token;
- topic: the profession's occupational domain (care, technical, arts, trades,
  business, public service), which plausibly drives both the prompt's
  embedding and the pronoun the model expects — a confounder by design;
- corrupt prompt: the same template with the profession replaced by a
  gendered noun (``"woman"`` by default), as in Vig et al.'s set-gender
  intervention.

Every profession and both pronouns are single tokens (with a leading space)
under SmolLM2's tokenizer and under GPT-2's, so every pair has equal token
length under both; words whose grammatical form is gendered (actor/actress,
waiter, chairman...) are left out.
"""

from __future__ import annotations

from ..errors import InputError, describe
from ..metrics import logit_diff
from ._base import PromptSet, check_seed, finish
from .words import GENDERED_NOUNS, PROFESSION_TEMPLATES, PROFESSIONS

__all__ = ["professions"]

def professions(n: int | None = 1000, seed: int = 0, tokenizer=None, *, corrupt_noun: str = "woman") -> PromptSet:
    """Prompts like "The nurse said that", scored by ``logit(" he") − logit(" she")``.

    Args:
        n: number of prompts, drawn without replacement from the 2,160 the
            templates make (``None``: all of them).
        seed: seed of the draw; the same seed gives the same set.
        tokenizer: if given, keep only pairs whose clean and corrupt prompts
            have equal token length under it (``n_dropped`` says how many were
            removed before the draw).
        corrupt_noun: the gendered noun that replaces the profession in the
            corrupt prompt; one of ``GENDERED_NOUNS``.

    Returns:
        A :class:`PromptSet` with topics (occupational domains), clean/corrupt
        pairs, ``answers`` = " he" and ``wrong_answers`` = " she" on every row, and
        ``metric`` = ``logit_diff(" he", " she")``.

    Example::

        >>> d = professions(n=1000)
        >>> len(d), d.prompts[0], d.corrupt[0], d.topics[0]
        (1000, 'The nurse said that', 'The woman said that', 'care')
    """
    seed = check_seed(seed)
    if corrupt_noun not in GENDERED_NOUNS:
        raise InputError(f"corrupt_noun must be one of {GENDERED_NOUNS}; received {describe(corrupt_noun)}")
    prompts, topics, corrupt = [], [], []
    for template in PROFESSION_TEMPLATES:
        for topic, words in PROFESSIONS.items():
            for word in words:
                prompts.append(template.format(word))
                topics.append(topic)
                corrupt.append(template.format(corrupt_noun))
    pool = PromptSet(
        name="professions",
        prompts=prompts,
        topics=topics,
        clean=prompts,
        corrupt=corrupt,
        answers=(" he",) * len(prompts),
        wrong_answers=(" she",) * len(prompts),
        metric=logit_diff(" he", " she"),
        description=(
            f"Gender bias of professions (after Vig et al. 2020): {len(PROFESSION_TEMPLATES)} templates x "
            f"{sum(map(len, PROFESSIONS.values()))} professions in {len(PROFESSIONS)} occupational domains (topics); "
            f"corrupt prompts replace the profession with {corrupt_noun!r}; "
            "metric logit(' he') - logit(' she') at the last token."
        ),
    )
    return finish(pool, n, seed, tokenizer)
