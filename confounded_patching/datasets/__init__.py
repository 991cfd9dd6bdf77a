"""Built-in prompt sets, generated from templates and word lists written for this project.

Every function returns a :class:`PromptSet`: prompts, topic labels (the
confounder), clean/corrupt pairs and a default outcome metric. Nothing is
downloaded and no corpus is copied. Pass ``tokenizer=`` to keep only pairs
whose clean and corrupt prompts have the same token length under it
(``PromptSet.n_dropped`` says how many were removed).

- :func:`professions` — gender bias, "The nurse said that" → " he" vs " she" (Vig et al. 2020)
- :func:`capitals` — factual recall, "The city of Paris is in the country of" → " France"
- :func:`ioi` — indirect-object identification (Wang et al. 2023)
- :func:`topic_toxicity` — hostile replies whose rate varies by topic, labelled by :class:`Labeler`
- :func:`from_jsonl` — your own prompts, one JSON object per line
- :func:`load` — any of the above by name
- :mod:`words` — the word lists and templates, as plain data

Example::

    >>> import confounded_patching as cp
    >>> data = cp.datasets.professions(n=1000, seed=0)
    >>> len(data), data.metric.name
    (1000, "logit_diff(' he', ' she')")
"""

from __future__ import annotations

from ..errors import InputError, describe
from ._base import PromptSet as PromptSet
from ._base import n_tokens as n_tokens
from ..metrics import LexiconMetric as LexiconMetric
from ..metrics import RowMetric as RowMetric
from ..metrics import answer_logit_diff as answer_logit_diff
from ..metrics import lexicon_logprob as lexicon_logprob
from .capitals import capitals as capitals
from .ioi import ioi as ioi
from .jsonl import from_jsonl as from_jsonl
from .lexicon import Labeler as Labeler
from .lexicon import label_continuations as label_continuations
from .lexicon import label_text as label_text
from .lexicon import load_lexicon as load_lexicon
from .professions import professions as professions
from .toxicity import topic_toxicity as topic_toxicity
from . import words as words

#: Built-in sets by name, for :func:`load` and the command line.
BUILTIN = {"professions": professions, "capitals": capitals, "ioi": ioi, "topic_toxicity": topic_toxicity}

__all__ = [
    "PromptSet", "professions", "capitals", "ioi", "topic_toxicity", "from_jsonl", "load", "BUILTIN",
    "Labeler", "label_text", "label_continuations", "load_lexicon",
    "RowMetric", "answer_logit_diff", "LexiconMetric", "lexicon_logprob", "n_tokens", "words",
]


def load(name: str, **kwargs) -> PromptSet:
    """A built-in set by name (keyword arguments go to its function), or a ``.jsonl`` path.

    Example::

        >>> load("professions", n=200, seed=1)
        >>> load("my_prompts.jsonl")
    """
    if not isinstance(name, str):
        raise InputError(f"name must be a str; received {describe(name)}")
    if name in BUILTIN:
        return BUILTIN[name](**kwargs)
    if name.endswith(".jsonl"):
        return from_jsonl(name, **kwargs)
    raise InputError(f"unknown dataset {name!r}; expected one of {tuple(BUILTIN)} or a path ending in .jsonl")
