"""Shared settings and session fixtures; the helpers of tests/helpers/ are importable as top-level modules
(``import tiny``, ``from simulations import sem``)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# torch threads that spin-wait make tiny-model tests many times slower on a busy machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct as an nnsight TransformersModel (loaded once)."""
    import confounded_patching as cp

    try:
        return cp.models.smollm2()
    except cp.ModelFileNotFound as err:  # pragma: no cover - CI installs it
        pytest.skip(f"embedded model not installed: {err}")


@pytest.fixture(scope="session")
def smol_tok():
    """The real SmolLM2 tokenizer, read from the embedded model's GGUF file (skips when it is not installed)."""
    import tokenizers_offline

    tok, reason = tokenizers_offline.smollm2_tokenizer()
    if tok is None:
        print(f"skipping SmolLM2 tokenizer tests: {reason}")
        pytest.skip(reason)
    return tok


@pytest.fixture(scope="session")
def gpt2_style_tok():
    import tokenizers_offline

    return tokenizers_offline.gpt2_style_tokenizer()
