"""A tiny local model folder and a JSONL prompt file, for the tests of the command line and the pipeline."""

import json
import random

import pytest

import tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-gpt2"
    tiny.hf_model("gpt2").save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return path


def write_jsonl(path, n=60, seed=0):
    """Prompts with topics, corrupt versions and answers that differ by row (a per-row metric)."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = [f"w{rng.randrange(3, 90)}" for _ in range(rng.randrange(4, 7))]
            corrupt = ["w95"] + words[1:]
            answer, wrong = rng.choice([(" w10", " w11"), (" w12", " w13")])
            fh.write(json.dumps({"prompt": " ".join(words), "topic": rng.choice("abc"), "corrupt": " ".join(corrupt),
                                 "answer": answer, "wrong_answer": wrong}) + "\n")
    return path


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "prompts.jsonl")
