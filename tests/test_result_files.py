"""Saved result files are trusted for nothing: every damaged or crafted file raises InputError naming it.

The cases: a truncated or non-zip file, a text file named ``.npz``, metadata
that lacks a field or names a member the archive lacks, a nested result of
an unknown type, an array whose shape disagrees with the other fields, a
pickled (object) member, random byte flips and truncation points
(hypothesis), saving onto a directory, and non-path arguments. Round trips
of every result type stay bit-identical and files are 0644 under umask 022.
"""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import confounded_patching as cp
from confounded_patching.interventions.ablation import AblationResult
from confounded_patching.estimation.aie import AIEResult, AIETable
from confounded_patching.interventions.clean_corrupt import PatchingResult
from confounded_patching.interventions.resample import ResampleResult

NODES = [cp.MLP(0, pos=-1), cp.MLP(1, pos=-1), cp.Head(0, 1, pos=-1), cp.Resid(1, pos=-2)]


def _patching(n_pairs: int = 3) -> PatchingResult:
    rng = np.random.default_rng(0)
    return PatchingResult(nodes=list(NODES), raw=rng.normal(size=(n_pairs, len(NODES))),
                          clean=rng.normal(size=n_pairs), corrupt=rng.normal(size=n_pairs), direction="denoise",
                          method="exact", metric="logit_diff", tokens=["w1", "w2"])


def _table(k: int, seed: int = 0) -> AIETable:
    rng = np.random.default_rng(seed)
    per = {name: rng.normal(size=k) for name in ("value", "ci_low", "ci_high", "se", "gamma", "gamma_max",
                                                 "gamma_noise", "ess", "pair_ess", "imbalance", "winsorized")}
    return AIETable(**per, status=["converged"] * k, boot=rng.normal(size=(k, 5)), gamma_x=0.1, ess_x=50.0,
                    imbalance_x=1e-9, status_x="converged", n=20, K=4, variant="v", estimator="hajek",
                    weights="eb", features="products", adjusted=True)


def _mediation():
    from confounded_patching.estimation.mediate import MediationResult

    return MediationResult(nodes=list(NODES), adjusted=_table(4), unadjusted=_table(4, seed=1),
                           topics=np.array(list("ab") * 10), outcome=np.arange(20.0), outcome_name="labels",
                           query="user arrays")


def _activations():
    g = torch.Generator().manual_seed(0)
    return cp.Activations(nodes=list(NODES), values=[torch.randn(5, d, generator=g) for d in (8, 8, 4, 8)],
                          prompts=[f"w{i}" for i in range(5)], lengths=torch.arange(1, 6),
                          outcome=torch.randn(5, generator=g), embedding=torch.randn(5, 8, generator=g))


def _members(path) -> tuple[dict, dict]:
    """``(meta, {member file: bytes})`` of a saved result."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
    return meta, members


def _rewrite(path, meta, members) -> None:
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    members = {**members, "__meta__.npy": buf.getvalue()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.fixture
def saved(tmp_path):
    return _patching().save(tmp_path / "patch.npz")


def _load_strict(cls, path):
    """``cls.load(path)`` with every warning (ResourceWarning included) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cls.load(path)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", [_patching, _mediation, _activations, lambda: _table(4),
                                  lambda: _table(4)[2]], ids=["patching", "mediation", "activations", "table", "aie"])
def test_round_trip_is_bit_identical_and_files_are_0644(tmp_path, make):
    old = os.umask(0o022)
    try:
        result = make()
        path = result.save(tmp_path / "r")
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    back = _load_strict(type(result), path)
    for name in result.__dataclass_fields__:
        a, b = getattr(result, name), getattr(back, name)
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        elif isinstance(a, (np.ndarray, torch.Tensor)):
            assert type(a) is type(b) and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
        elif isinstance(a, AIETable):
            assert np.array_equal(a.boot, b.boot) and a.status == b.status
        else:
            assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


def test_ablation_and_resample_results_round_trip(tmp_path):
    abl = AblationResult(nodes=NODES[:2], how="resample", values=np.arange(4.0), baseline=np.ones(4),
                         outcome="m", donors=np.array([1, 0, 3, 2]))
    back = _load_strict(AblationResult, abl.save(tmp_path / "a"))
    assert np.array_equal(back.donors, abl.donors) and back.how == "resample"
    res = ResampleResult(nodes=NODES, effects=np.ones((3, 4)), pairs=np.array([[0, 1], [1, 2], [2, 0]]),
                         baseline=np.zeros(3), outcome="m")
    assert np.array_equal(_load_strict(ResampleResult, res.save(tmp_path / "r")).pairs, res.pairs)


# ----------------------------------------------------------------------------- files that are not results


def test_truncated_file_is_named(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(cp.InputError, match=rf"{saved} is damaged or not a saved result: BadZipFile"):
        _load_strict(PatchingResult, saved)


def test_failed_load_leaves_no_file_open(saved):
    saved.write_bytes(saved.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(cp.InputError):
            PatchingResult.load(saved)
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_text_file_named_npz_is_refused(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("raw,clean\n1,2\n")
    with pytest.raises(cp.InputError, match=rf"{path} is not a saved result: expected an .npz \(zip\) archive; "
                                            r"the file starts with b'raw,'"):
        _load_strict(PatchingResult, path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(cp.InputError, match=r"is not a saved result: .*\(it is empty\)"):
        _load_strict(PatchingResult, path)


def test_zip_without_meta_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, raw=np.ones(3))
    with pytest.raises(cp.InputError, match=r"is not a saved result \(no __meta__ member\)"):
        _load_strict(PatchingResult, path)


def test_other_result_type_is_named(saved):
    with pytest.raises(cp.InputError, match=r"holds a PatchingResult, not a ResampleResult"):
        _load_strict(ResampleResult, saved)


# ----------------------------------------------------------------------------- crafted metadata


def test_metadata_without_a_field_is_refused(saved):
    meta, members = _members(saved)
    del meta["fields"]["raw"]
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=rf"{saved}: the saved PatchingResult lacks field\(s\) \['raw'\]"):
        _load_strict(PatchingResult, saved)


def test_metadata_naming_a_missing_member_is_refused(saved):
    meta, members = _members(saved)
    meta["members"]["raw"] = "zz"
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=rf"{saved}: __meta__ names member 'zz', which the archive lacks"):
        _load_strict(PatchingResult, saved)


def test_field_naming_an_unlisted_array_is_refused(saved):
    meta, members = _members(saved)
    meta["fields"]["raw"] = {"__array__": "elsewhere"}
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=r"refers to array 'elsewhere', which the metadata's member list lacks"):
        _load_strict(PatchingResult, saved)


def test_unknown_nested_result_type_is_refused(saved):
    meta, members = _members(saved)
    meta["fields"]["clean"] = {"__result__": "Nope", "fields": {}}
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=rf"{saved}: unknown nested result type 'Nope'"):
        _load_strict(PatchingResult, saved)


def test_nested_result_missing_a_field_is_refused(tmp_path):
    path = _mediation().save(tmp_path / "med")
    meta, members = _members(path)
    del meta["fields"]["adjusted"]["fields"]["boot"]
    _rewrite(path, meta, members)
    with pytest.raises(cp.InputError, match=r"the saved AIETable lacks field\(s\) \['boot'\]"):
        _load_strict(cp.MediationResult, path)


def test_meta_that_is_not_an_object_is_refused(saved):
    _, members = _members(saved)
    _rewrite(saved, ["not", "an", "object"], members)
    with pytest.raises(cp.InputError, match=r"__meta__ must be a JSON object; received list of length 3"):
        _load_strict(PatchingResult, saved)


# ----------------------------------------------------------------------------- shapes that disagree


def _replace_array(path, field, array) -> None:
    """Swap a field's array (and its checksum, as a careful forger would)."""
    from confounded_patching.results import array_digest

    meta, members = _members(path)
    member = meta["members"][field]
    members[member + ".npy"] = _npy(array)
    meta["checksums"][member] = array_digest(np.asarray(array))
    _rewrite(path, meta, members)


def test_raw_of_the_wrong_shape_is_refused(saved):
    _replace_array(saved, "raw", np.zeros((3, 3, 3)))
    with pytest.raises(cp.InputError, match=rf"{saved}: field 'raw' must have shape \[3, 4\]; received shape "
                                            r"\(3, 3, 3\)"):
        _load_strict(PatchingResult, saved)


def test_member_declaring_more_data_than_it_holds_is_refused_before_reading(saved):
    meta, members = _members(saved)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    members[meta["members"]["raw"] + ".npy"] = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(96)
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=r"member 'a0' declares float64 \(1000000000000,\) \(8000000000000 bytes\) "
                                            r"but holds 96 bytes of data: the file is damaged"):
        _load_strict(PatchingResult, saved)


def test_checksum_catches_an_array_swapped_without_updating_it(saved):
    meta, members = _members(saved)
    members[meta["members"]["raw"] + ".npy"] = _npy(np.zeros((3, 4)))
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=r"member 'a0' does not match its checksum: the file is damaged"):
        _load_strict(PatchingResult, saved)


@pytest.mark.parametrize("make, field, bad, message", [
    (_mediation, "outcome", np.zeros((20, 2)), r"field 'outcome' must have shape \[any\]"),
    (_mediation, "topics", np.array(list("abc")), r"field 'topics' must have shape \[20\]; received shape \(3,\)"),
    (_mediation, "adjusted.boot", np.zeros((3, 5)), r"field 'boot' must have shape \[4, any\]"),
    (_mediation, "unadjusted.ess", np.zeros(5), r"field 'ess' must have shape \[4\]"),
    (_activations, "values.2", torch.zeros(6, 4), r"field 'values\[2\]' must have shape \[5, any\]"),
    (_activations, "embedding", torch.zeros(4, 8), r"field 'embedding' must have shape \[5, any\]"),
    (_activations, "lengths", torch.zeros(5), r"field 'lengths' must hold integers"),
], ids=["outcome", "topics", "boot", "ess", "values", "embedding", "lengths"])
def test_inconsistent_shapes_are_refused(tmp_path, make, field, bad, message):
    result = make()
    path = result.save(tmp_path / "r")
    _replace_array(path, field, bad.numpy() if isinstance(bad, torch.Tensor) else bad)
    with pytest.raises(cp.InputError, match=message):
        _load_strict(type(result), path)


def test_resample_pairs_out_of_range_are_refused(tmp_path):
    res = ResampleResult(nodes=NODES, effects=np.ones((2, 4)), pairs=np.array([[0, 1], [1, 2]]),
                         baseline=np.zeros(3), outcome="m")
    path = res.save(tmp_path / "r")
    _replace_array(path, "pairs", np.array([[0, 1], [1, 7]]))
    with pytest.raises(cp.InputError, match=r"field 'pairs' must index the 3 prompts of baseline; received "
                                            r"indices from 0 to 7"):
        _load_strict(ResampleResult, path)


def test_ablation_donors_of_the_wrong_length_are_refused(tmp_path):
    res = AblationResult(nodes=NODES[:1], how="resample", values=np.arange(4.0), baseline=np.ones(4), outcome="m",
                         donors=np.array([1, 0, 3, 2]))
    path = res.save(tmp_path / "a")
    _replace_array(path, "donors", np.array([1, 0]))
    with pytest.raises(cp.InputError, match=r"field 'donors' must have shape \[4\]; received shape \(2,\)"):
        _load_strict(AblationResult, path)


def test_aie_result_with_a_non_numeric_value_is_refused(tmp_path):
    path = _table(3)[0].save(tmp_path / "one")
    meta, members = _members(path)
    meta["fields"]["value"] = "0.5"
    _rewrite(path, meta, members)
    with pytest.raises(cp.InputError, match=r"field 'value' must be int or float; received '0.5'"):
        _load_strict(AIEResult, path)


# ----------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("field", ["raw", "clean"])
def test_pickled_member_is_refused_and_never_run(saved, tmp_path, field):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    meta, members = _members(saved)
    members[meta["members"][field] + ".npy"] = _npy(np.array([Payload()], dtype=object))
    _rewrite(saved, meta, members)
    with pytest.raises(cp.InputError, match=r"holds pickled \(object\) data, which load refuses"):
        _load_strict(PatchingResult, saved)
    assert not marker.exists()


def test_pickle_file_named_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(cp.InputError, match=r"is not a saved result: expected an .npz \(zip\) archive"):
        _load_strict(PatchingResult, path)
    assert not marker.exists()


def test_object_array_is_refused_on_save(tmp_path):
    bad = PatchingResult(nodes=NODES, raw=np.empty((1, 4), dtype=object), clean=np.ones(1), corrupt=np.ones(1),
                         direction="denoise", method="exact", metric="m")
    with pytest.raises(cp.InputError, match=r"field 'raw' holds an object array"):
        bad.save(tmp_path / "x")


# ----------------------------------------------------------------------------- random damage


def _outcome(cls, path, original) -> None:
    """Loading a damaged file raises InputError or gives back exactly the original; nothing else."""
    try:
        back = _load_strict(cls, path)
    except cp.InputError as err:
        assert str(path) in str(err)
        return
    assert back.nodes == original.nodes and back.metric == original.metric
    for name in ("raw", "clean", "corrupt"):
        assert np.array_equal(getattr(back, name), getattr(original, name))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_flipped_byte_raises_input_error_or_changes_nothing(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("flip") / "patch.npz"
    original = _patching(5)
    blob = bytearray(original.save(path).read_bytes())
    i = data.draw(st.integers(0, len(blob) - 1), label="byte")
    blob[i] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(blob))
    _outcome(PatchingResult, path, original)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_truncation_raises_input_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cut") / "patch.npz"
    blob = _patching(5).save(path).read_bytes()
    path.write_bytes(blob[: data.draw(st.integers(0, len(blob) - 1), label="length")])
    with pytest.raises(cp.InputError, match=str(path)):
        _load_strict(PatchingResult, path)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=8)
_markers = st.sampled_from(["__array__", "__node__", "__result__", "__dict__", "torch", "fields"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_crafted_field_raises_input_error_or_loads(tmp_path_factory, data):
    """Random JSON (with the encoder's markers) in place of a field: InputError naming the file, or a load."""
    path = tmp_path_factory.mktemp("craft") / "med.npz"
    _mediation().save(path)
    meta, members = _members(path)
    fields = meta["fields"]
    if data.draw(st.booleans(), label="nested"):
        fields = fields[data.draw(st.sampled_from(["adjusted", "unadjusted"]), label="table")]["fields"]
    name = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(_json | st.dictionaries(_markers, _json, min_size=1, max_size=2), label="value")
    fields[name] = value
    _rewrite(path, meta, members)
    try:
        _load_strict(cp.MediationResult, path)
    except cp.InputError as err:
        assert str(path) in str(err)


def test_flips_in_every_array_byte_are_caught(tmp_path):
    """Stored (uncompressed) members have no deflate check; the checksums in __meta__ catch every flip."""
    original = _patching(2)
    path = original.save(tmp_path / "p.npz")
    meta, members = _members(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # rewrite uncompressed, the same content
        for name, data in members.items():
            z.writestr(name, data)
    blob = path.read_bytes()
    raw = members[meta["members"]["raw"] + ".npy"]
    start = blob.index(raw)
    caught = 0
    for i in range(start + len(raw) - original.raw.nbytes, start + len(raw)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(cp.InputError, match=r"member 'a0' does not match its checksum|Bad CRC"):
            _load_strict(PatchingResult, path)
        caught += 1
    assert caught == original.raw.nbytes


# ----------------------------------------------------------------------------- arguments


def test_save_onto_a_directory_names_it(tmp_path):
    target = tmp_path / "out.npz"
    target.mkdir()
    with pytest.raises(cp.InputError, match=rf"save: path {target} is an existing directory; give a file name"):
        _patching().save(target)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_of_a_directory_names_it(tmp_path):
    with pytest.raises(cp.InputError, match=rf"load: path {tmp_path} is a directory; expected a file saved by "
                                            r"PatchingResult\.save"):
        PatchingResult.load(tmp_path)


@pytest.mark.parametrize("bad", [None, 3, b"x.npz"])
def test_non_path_arguments_are_refused(bad, saved):
    with pytest.raises(cp.InputError, match=rf"load: path must be a file path \(str or os.PathLike\); received"):
        PatchingResult.load(bad)
    with pytest.raises(cp.InputError, match=rf"save: path must be a file path"):
        _patching().save(bad)
