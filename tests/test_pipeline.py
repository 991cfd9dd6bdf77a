"""The pipeline run from Python: the same files as the command line, nothing written on bad input."""

import json

import pytest

from confounded_patching import pipeline
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
