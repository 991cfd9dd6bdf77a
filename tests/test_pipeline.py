"""The pipeline run from Python: the same files as the command line, nothing written on bad input."""

import json

import pytest

import confounded_patching as cp
from confounded_patching import pipeline
from confounded_patching.errors import ModelFileNotFound
from runs import jsonl, model_dir  # noqa: F401  (fixtures)


def test_run_from_python_writes_the_results_and_the_report(tmp_path, model_dir, jsonl):
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(jsonl), kinds=("mlp", "head"),
                               steps=("patch", "resample"), n_pairs=2, resample_nodes=3, resample_pairs=3,
                               quiet=True)
    files = pipeline.run(options, tmp_path / "out")
    names = sorted(f.name for f in files)
    assert names == ["dataset.jsonl", "patch.csv", "patch.npz", "report.html", "resample.csv", "resample.npz",
                     "settings.json"]
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["steps"] == ["patch", "resample"] and settings["kinds"] == ["mlp", "head"]


def test_a_bad_dataset_writes_nothing(tmp_path, model_dir):
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(pipeline.UsageError, match="no such file"):
        pipeline.run(options, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _no_forward(*args, **kwargs):
    raise AssertionError("a step ran before the sizes were checked")


@pytest.fixture
def steps_must_not_run(monkeypatch):
    for name in ("patch", "resample", "confirm", "mediate"):
        monkeypatch.setattr(pipeline, name, _no_forward)


def test_too_few_prompts_for_the_eb_dims_fail_before_any_step(tmp_path, model_dir, jsonl, steps_must_not_run):
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(jsonl), n_prompts=40, dims=8,
                               quiet=True)
    # 2 * (2 d_q + d_n + k) + 10 with d_q = d_n = 8 and the jsonl's 3 topics (k = 2)
    with pytest.raises(pipeline.UsageError, match=r"cannot run on the 40 prompts .* = 62 prompts"):
        pipeline.run(options, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_sentence_encoder_fails_before_any_step(tmp_path, model_dir, jsonl, steps_must_not_run,
                                                          monkeypatch):
    def missing():
        raise ModelFileNotFound("the sentence encoder all-MiniLM-L6-v2 is not installed. Install it with:\n    pip ...")

    monkeypatch.setattr(pipeline, "minilm_zip", missing)
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(jsonl), quiet=True)
    with pytest.raises(pipeline.UsageError, match=r"mediate step .* is not installed\. Install it with: pip .*; or "
                                                  r"leave mediate out of --steps"):
        pipeline.run(options, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_topics_without_donors_fail_before_any_step(tmp_path, model_dir, steps_must_not_run):
    data = tmp_path / "singletons.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}", "topic": f"t{i}", "answer": " w1",
                                        "wrong_answer": " w2"}) + "\n" for i in range(3, 20)))
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(data), steps=("resample",),
                               quiet=True)
    with pytest.raises(pipeline.UsageError, match="resample AIE's pairs .* cannot be drawn .*--no-stratify"):
        pipeline.run(options, tmp_path / "out")


def test_every_step_names_its_method(tmp_path, model_dir, jsonl):
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(jsonl), kinds=("head", "resid"),
                               resid_positions=(-1,), steps=("patch", "resample", "confirm"), n_pairs=2,
                               resample_pairs=3, confirm_top=2, confirm_random=1, quiet=True)
    pipeline.run(options, tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["method: classic patching"].startswith("2 clean/corrupt pairs, denoising; ")
    assert "attribution for heads (8)" in settings["method: classic patching"]
    assert "exact for residual stream (2)" in settings["method: classic patching"]
    resample = settings["method: resample AIE"]
    assert "own topic" in resample and "attribution for heads (8)" in resample and "exact for residual stream (2)" \
        in resample
    assert settings["method: exact confirmation"].startswith("exact resample on the resample AIE's pairs; ")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "attribution for heads (8)" in html


def test_patch_method_exact_gives_one_result(tmp_path, model_dir, jsonl):
    options = pipeline.Options(command="run", model=str(model_dir), dataset=str(jsonl), kinds=("mlp", "resid"),
                               resid_positions=(-1,), steps=("patch",), patch_method="exact", n_pairs=2, quiet=True)
    names = sorted(f.name for f in pipeline.run(options, tmp_path / "out"))
    assert "patch.npz" in names and not [n for n in names if n.startswith("patch_")]
    assert cp.PatchingResult.load(tmp_path / "out" / "patch.npz").method == "exact"
