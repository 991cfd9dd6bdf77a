"""An activation store never mixes models, never hands back damaged data, and recovers bit-identically.

- Fingerprints: a store interrupted under one model and resumed under another
  of the same architecture (or reused complete, or with another tokenizer,
  or with weights that differ by 1e-6 in one entry) is refused, naming what
  differs; the same model behind another backend resumes.
- Checksums: a flipped byte, a truncated shard or a garbled header is named
  on every read path and recomputed, with a warning, on resume; the store is
  then bit-identical to an uninterrupted run's. Random flips (hypothesis)
  are caught or change nothing.
- Leftovers and files: temporary files of a killed write are removed on
  resume; shards are 0644 under umask 022; a corrupt manifest, a regular
  file as the store, and format 1 stores are handled as documented.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import confounded_patching as cp
import tiny
from confounded_patching.errors import StoreCorruptError
from confounded_patching.activations.store import ActivationStore

NODES = [cp.MLP(0), cp.Head(1, 2), cp.Resid(1, pos=-2)]
N_PROMPTS, BATCH = 40, 4  # 10 shards


class FailsOnFourthBatch:
    """A metric (same name every time) that raises on its 4th call, as an interruption."""

    name = "diff_1_2"

    def __init__(self, fail_at: int | None = 4):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, logits):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return logits[:, 1] - logits[:, 2]


@pytest.fixture(scope="module")
def model():
    return tiny.hf_model("gpt2")


@pytest.fixture(scope="module")
def prompts():
    return tiny.prompts(N_PROMPTS, seed=11)


def _collect(model, prompts, path, *, tokenizer=None, fail_at=None, **kwargs):
    return cp.collect(model, prompts, NODES, tokenizer=tokenizer or tiny.tokenizer(),
                      metric=FailsOnFourthBatch(fail_at), batch_size=BATCH, store=path, progress=False, **kwargs)


def _interrupted(model, prompts, path):
    with pytest.raises(RuntimeError, match="interrupted"):
        _collect(model, prompts, path, fail_at=4)
    assert len(list(path.glob("shard-*.safetensors"))) == 3


@pytest.fixture(scope="module")
def reference(model, prompts, tmp_path_factory):
    """An uninterrupted run's store."""
    return _collect(model, prompts, tmp_path_factory.mktemp("reference"))


def _shards(path) -> dict:
    return {p.name: load_file(p) for p in sorted(path.glob("shard-*.safetensors"))}


def assert_bit_identical(path, reference) -> None:
    """Every tensor of every shard equals the uninterrupted run's (and so do the checksums)."""
    ours, theirs = _shards(path), _shards(reference.path)
    assert ours.keys() == theirs.keys() and len(ours) == N_PROMPTS // BATCH
    for name in ours:
        assert ours[name].keys() == theirs[name].keys()
        for key in ours[name]:
            assert torch.equal(ours[name][key], theirs[name][key]), (name, key)
    loaded, expected = ActivationStore.open(path).load(), reference.load()
    for node in NODES:
        assert torch.equal(loaded[node], expected[node])
    assert torch.equal(loaded.outcome, expected.outcome) and torch.equal(loaded.lengths, expected.lengths)


def _other_tokenizer():
    """The tiny word-level tokenizer with two words' ids swapped."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = list(tiny.VOCAB)
    vocab[3], vocab[4] = vocab[4], vocab[3]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", unk_token="<unk>",
                                   eos_token="<pad>")


def _flip(path, offset: int, xor: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= xor
    path.write_bytes(bytes(data))


def _data_start(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


# ----------------------------------------------------------------------------- fingerprints


def test_resume_under_another_model_of_the_same_architecture_is_refused(model, prompts, tmp_path, reference):
    _interrupted(model, prompts, tmp_path)
    before = _shards(tmp_path)
    with pytest.raises(cp.InputError, match=rf"the store at {tmp_path} was collected with model [0-9a-f]{{12}}… "
                                            r"\(gpt2, 2 layers, d_model 64\); this call's model is [0-9a-f]{12}… "
                                            r"\(gpt2, 2 layers, d_model 64\): its weights differ\. Resuming would "
                                            r"mix two models' activations: use a new directory"):
        _collect(tiny.hf_model("gpt2", seed=1), prompts, tmp_path)
    after = _shards(tmp_path)
    assert after.keys() == before.keys()  # nothing was written
    _collect(model, prompts, tmp_path)  # the right model resumes
    assert_bit_identical(tmp_path, reference)


def test_complete_store_reused_with_another_model_is_refused(model, prompts, reference):
    with pytest.raises(cp.InputError, match=r"its weights differ"):
        _collect(tiny.hf_model("gpt2", seed=1), prompts, reference.path)
    with pytest.raises(cp.InputError, match=r"its weights differ"):
        cp.mediate(tiny.hf_model("gpt2", seed=1), prompts, NODES, FailsOnFourthBatch(None),
                   tokenizer=tiny.tokenizer(), batch_size=BATCH, store=reference.path, progress=False,
                   query=np.random.default_rng(0).normal(size=(N_PROMPTS, 4)), d_q=2, d_n=2)  # enough prompts


def test_weights_that_differ_in_one_entry_by_1e_6_are_refused(model, prompts, reference):
    import copy

    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.transformer.h[1].mlp.c_proj.weight[3, 5] += 1e-6
    with pytest.raises(cp.InputError, match=r"its weights differ"):
        _collect(nudged, prompts, reference.path)


def test_configuration_that_differs_with_equal_weights_is_refused(model, prompts, reference):
    import copy

    other = copy.deepcopy(model)
    other.config.layer_norm_epsilon = 1e-3
    with pytest.raises(cp.InputError, match=r"its configuration differs \(layer_norm_epsilon 1e-05 vs 0\.001\)"):
        _collect(other, prompts, reference.path)


def test_another_tokenizer_is_refused(model, prompts, reference):
    with pytest.raises(cp.InputError, match=r"was collected with tokenizer [0-9a-f]{12}… \(\w+, "
                                            r"vocabulary of 100\); this call's tokenizer is [0-9a-f]{12}… .*: its "
                                            r"vocabulary differs\. Use the store's tokenizer"):
        _collect(model, prompts, reference.path, tokenizer=_other_tokenizer())


def test_the_same_model_behind_another_backend_resumes(model, prompts, tmp_path):
    import nnsight

    _interrupted(model, prompts, tmp_path)
    store = _collect(nnsight.TransformersModel(model, tokenizer=tiny.tokenizer()), prompts, tmp_path)
    assert store.complete and store.manifest["meta"]["backend"] == "nnsight"


def test_the_store_records_the_fingerprints(reference):
    identity = reference.manifest["identity"]
    assert identity["model"]["family"] == "gpt2" and len(identity["model"]["weights"]) == 64
    assert identity["tokenizer"]["vocab_size"] == 100 and "probe" in identity["tokenizer"]


def test_weights_not_materialised_are_identified_by_name(model):
    from transformers import AutoModelForCausalLM

    from confounded_patching.activations.fingerprint import identity_mismatch, weights_digest

    with torch.device("meta"):
        remote = AutoModelForCausalLM.from_config(tiny.config("gpt2"))
    assert weights_digest(remote) is None and len(weights_digest(model)) == 64
    old = {"model": {"family": "gpt2", "weights": None, "name": "org/model-a"}, "tokenizer": None}
    assert identity_mismatch("DIR", old, {**old}) is None
    other = {"model": {**old["model"], "name": "org/model-b"}, "tokenizer": None}
    assert "its weights cannot be compared" in identity_mismatch("DIR", old, other)


def test_config_keys_present_on_one_side_only_do_not_refuse():
    from confounded_patching.activations.fingerprint import identity_mismatch

    base = {"family": "gpt2", "weights": "ab" * 32, "config": {"n_embd": 64}}
    newer = {**base, "config": {"n_embd": 64, "a_key_a_new_version_adds": True}}
    assert identity_mismatch("DIR", {"model": base}, {"model": newer}) is None


# ----------------------------------------------------------------------------- checksums


def _copy(reference, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(reference.path, path)
    return path


def _read_paths(path):
    """Every way of reading a store, each on a fresh object."""
    return {
        "load": lambda: ActivationStore.open(path).load(),
        "iter_chunks": lambda: [c for c in ActivationStore.open(path).iter_chunks()],
        "outcome": lambda: ActivationStore.open(path).outcome,
        "verify_shards": lambda: ActivationStore.open(path).verify_shards(),
    }


def test_flipped_byte_is_named_on_every_read_and_recomputed_on_resume(model, prompts, reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00003.safetensors"
    _flip(shard, len(shard.read_bytes()) - 3)  # in the last tensor's data
    for how, read in _read_paths(path).items():
        if how == "iter_chunks":
            continue  # reads only node tensors; checked below on a node tensor
        with pytest.raises(StoreCorruptError, match=r"shard-00003\.safetensors") as err:
            read()
        assert err.value.shards == ["shard-00003.safetensors"] and "checksum mismatch" in str(err.value)
    with pytest.warns(UserWarning, match=r"1 damaged shard\(s\), recomputed now: shard-00003\.safetensors "
                                         r"\(checksum mismatch in tensor"):
        _collect(model, prompts, path)
    assert_bit_identical(path, reference)


def test_flipped_byte_in_a_node_tensor_is_named_by_iter_chunks(reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00001.safetensors"
    _flip(shard, _data_start(shard) + 1)  # the first tensor's data
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.safetensors is damaged: checksum mismatch in tensor"):
        for _ in ActivationStore.open(path).iter_chunks():
            pass


def test_truncated_shard_is_named_and_recomputed(model, prompts, reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00005.safetensors"
    shard.write_bytes(shard.read_bytes()[:300])
    for read in _read_paths(path).values():
        with pytest.raises(StoreCorruptError, match=r"shard-00005\.safetensors"):
            read()
    with pytest.warns(UserWarning, match=r"shard-00005\.safetensors \(truncated"):
        _collect(model, prompts, path)
    assert_bit_identical(path, reference)


@pytest.mark.parametrize("damage", ["garbled header", "header length", "empty file"])
def test_unreadable_header_is_named_and_recomputed(model, prompts, reference, tmp_path, damage):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00007.safetensors"
    if damage == "garbled header":
        _flip(shard, 9, 0x7F)  # inside the JSON header
    elif damage == "header length":
        _flip(shard, 6, 0xFF)  # the length overruns the file
    else:
        shard.write_bytes(b"")
    with pytest.raises(StoreCorruptError, match=r"shard-00007\.safetensors is damaged"):
        ActivationStore.open(path).load()
    with pytest.warns(UserWarning, match=r"shard-00007\.safetensors"):
        _collect(model, prompts, path)
    assert_bit_identical(path, reference)


def test_two_damaged_shards_are_both_named(reference, tmp_path):
    path = _copy(reference, tmp_path)
    for i in (2, 8):
        shard = path / f"shard-0000{i}.safetensors"
        _flip(shard, len(shard.read_bytes()) - 1)
    with pytest.raises(StoreCorruptError, match=r"2 shards of .* are damaged: shard-00002\.safetensors: .*; "
                                                r"shard-00008\.safetensors") as err:
        ActivationStore.open(path).load()
    assert err.value.shards == ["shard-00002.safetensors", "shard-00008.safetensors"]


def test_renamed_tensor_is_damaged_not_absent(reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00002.safetensors"
    blob = shard.read_bytes()
    at = blob.index(b'"__outcome__"', 8)  # the tensor's entry in the header, not the checksums' escaped copy
    shard.write_bytes(blob[:at] + b'"__outcomX__"' + blob[at + 13:])
    with pytest.raises(StoreCorruptError, match=r"shard-00002\.safetensors is damaged: its tensors are not those its "
                                                r"checksums list"):
        ActivationStore.open(path).outcome


def test_shard_without_checksums_is_damaged(reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00004.safetensors"
    save_file(load_file(shard), shard)  # rewritten without the checksums
    with pytest.raises(StoreCorruptError, match=r"shard-00004\.safetensors is damaged: its header holds no checksums"):
        ActivationStore.open(path).outcome


def test_interrupted_then_damaged_then_resumed_is_bit_identical(model, prompts, reference, tmp_path):
    _interrupted(model, prompts, tmp_path)
    _flip(tmp_path / "shard-00001.safetensors", len((tmp_path / "shard-00001.safetensors").read_bytes()) - 2)
    with pytest.warns(UserWarning, match=r"shard-00001\.safetensors"):
        _collect(model, prompts, tmp_path)
    assert_bit_identical(tmp_path, reference)


@pytest.fixture(scope="module")
def pristine(reference):
    shard = reference.path / "shard-00006.safetensors"
    return shard.read_bytes(), ActivationStore.open(reference.path).load()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_is_caught_or_changes_nothing(reference, pristine, tmp_path_factory, data):
    blob, expected = pristine
    path = tmp_path_factory.mktemp("flip") / "store"
    shutil.copytree(reference.path, path)
    shard = path / "shard-00006.safetensors"
    damaged = bytearray(blob)
    damaged[data.draw(st.integers(0, len(blob) - 1), label="offset")] ^= data.draw(st.integers(1, 255), label="xor")
    shard.write_bytes(bytes(damaged))
    try:
        ActivationStore.open(path).verify_shards()
    except StoreCorruptError as err:
        assert err.shards == ["shard-00006.safetensors"]
        with pytest.raises(StoreCorruptError, match=r"shard-00006\.safetensors"):
            ActivationStore.open(path).load()
        return
    loaded = ActivationStore.open(path).load()  # the flip hit JSON padding: nothing read changed
    assert all(torch.equal(loaded[n], expected[n]) for n in NODES) and torch.equal(loaded.outcome, expected.outcome)


def test_each_tensor_is_hashed_once_per_store_object(reference, monkeypatch):
    from confounded_patching.activations import shards

    calls = []
    original = shards.tensor_digest
    monkeypatch.setattr(shards, "tensor_digest", lambda t: calls.append(1) or original(t))
    view = ActivationStore.open(reference.path).select(NODES[:2])
    for _ in range(3):
        for _ in view.iter_chunks():
            pass
    assert len(calls) == 3 * (N_PROMPTS // BATCH)  # __index__ and two nodes per shard, the first pass only


def test_verify_false_skips_the_tensor_checksums(reference, tmp_path):
    path = _copy(reference, tmp_path)
    shard = path / "shard-00003.safetensors"
    _flip(shard, len(shard.read_bytes()) - 3)
    assert ActivationStore.open(path, verify=False).load().outcome.shape == (N_PROMPTS,)


# ----------------------------------------------------------------------------- leftovers, permissions, paths


def test_stale_temporary_files_are_removed_on_resume(model, prompts, reference, tmp_path):
    _interrupted(model, prompts, tmp_path)
    (tmp_path / ".shard-00003.safetensors.k2j4x1.tmp").write_bytes(b"")  # a write killed before any byte
    (tmp_path / ".manifest.json.a8f3.tmp").write_bytes(b"{")
    with pytest.warns(UserWarning, match=r"removed 2 temporary file\(s\) that an interrupted write left"):
        _collect(model, prompts, tmp_path)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert_bit_identical(tmp_path, reference)


def test_shards_and_manifest_are_0644_under_umask_022(model, prompts, tmp_path):
    old = os.umask(0o022)
    try:
        _collect(model, prompts[:8], tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert modes and set(modes.values()) == {"0o644"}, modes


def test_shards_follow_a_stricter_umask(model, prompts, tmp_path):
    old = os.umask(0o077)
    try:
        _collect(model, prompts[:8], tmp_path)
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o600"}


@pytest.mark.parametrize("content, message", [
    ("{not json", r"manifest\.json is damaged: not a readable JSON manifest"),
    ("", r"manifest\.json is damaged: not a readable JSON manifest"),
    ("[1, 2]", r"manifest\.json is damaged: expected a JSON object; received list of length 2"),
    ('{"format": "confounded_patching.store/2", "nodes": []}',
     r"manifest\.json is damaged: field 'n_prompts' is missing or of the wrong type \(received None\)"),
], ids=["garbled", "empty", "list", "missing field"])
def test_corrupt_manifest_is_named(reference, tmp_path, content, message):
    path = _copy(reference, tmp_path)
    (path / "manifest.json").write_text(content)
    with pytest.raises(cp.InputError, match=rf"{path}/{message}"):
        ActivationStore.open(path)


def test_regular_file_as_the_store_is_refused(model, prompts, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    with pytest.raises(cp.InputError, match=rf"store must be a directory for the activation store; {target} is an "
                                            r"existing file"):
        _collect(model, prompts, target)
    assert target.read_text() == "keep me"


def test_shards_without_a_manifest_are_not_adopted(model, prompts, reference, tmp_path):
    path = _copy(reference, tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(cp.InputError, match=r"holds 10 shard\(s\) \(e\.g\. shard-00000\.safetensors\) but no "
                                            r"manifest\.json"):
        _collect(model, prompts, path)


@pytest.mark.parametrize("bad", [3, b"dir", ["dir"]])
def test_store_that_is_not_a_path_is_refused(model, prompts, bad):
    with pytest.raises(cp.InputError, match=r"store must be a directory path \(str or os\.PathLike\); received"):
        _collect(model, prompts, bad)
    with pytest.raises(cp.InputError, match=r"path must be a directory path"):
        ActivationStore.open(bad)


# ----------------------------------------------------------------------------- format 1 stores


@pytest.fixture
def format_1(reference, tmp_path):
    """The reference store as the previous format wrote it: no identity, no checksums."""
    path = _copy(reference, tmp_path)
    for shard in path.glob("shard-*.safetensors"):
        save_file(load_file(shard), shard)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "confounded_patching.store/1"
    del manifest["identity"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_format_1_store_opens_for_reading_with_a_warning(format_1, reference):
    with pytest.warns(UserWarning, match=r"has format 1, which records no shard checksums: its shards are read "
                                         r"unverified"):
        store = ActivationStore.open(format_1)
    loaded, expected = store.load(), reference.load()
    assert all(torch.equal(loaded[n], expected[n]) for n in NODES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(cp.InputError, match=r"format 1, which records no checksums to verify"):
            ActivationStore.open(format_1).verify_shards()


def test_format_1_store_is_not_resumed(model, prompts, format_1):
    with pytest.raises(cp.InputError, match=r"has format 1, which records neither the model that collected it nor "
                                            r"shard checksums.*Read it with ActivationStore\.open\(DIR\)"):
        _collect(model, prompts, format_1)
