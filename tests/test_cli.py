"""The confounded-patching command line: a run on a tiny local model, help text, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

import confounded_patching as cp
from confounded_patching import cli
from runs import jsonl, model_dir  # noqa: F401  (fixtures)


SMALL = ["--dims", "2", "--n-boot", "10", "-K", "10", "--n-pairs", "2", "--resample-nodes", "4",
         "--resample-pairs", "4", "--quiet"]


def _run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# ----------------------------------------------------------------------------- a real run


def test_no_stratify_draws_donors_from_every_prompt(tmp_path, model_dir, jsonl, capsys):
    for flag, stratified in (("--no-stratify", False), (None, True)):
        out = tmp_path / str(stratified)
        argv = ["run", "--model", str(model_dir), "--dataset", str(jsonl), "--out", str(out), "--steps", "resample",
                "--kinds", "head", *SMALL] + ([flag] if flag else [])
        code, _, err = _run(capsys, *argv)
        assert code == 0, err
        assert json.loads((out / "settings.json").read_text())["stratify"] is stratified
        assert cp.ResampleResult.load(out / "resample.npz").stratified is stratified


def test_run_writes_the_report_and_data_files(tmp_path, model_dir, jsonl, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", "--model", str(model_dir), "--dataset", str(jsonl), "--out", str(out),
                        "--positions", "-1", "--resid-positions", "-2,-1", *SMALL)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confirm.csv", "confirm.npz", "dataset.jsonl", "mediation.csv", "mediation.npz", "patch.csv",
                     "patch.npz", "report.html", "resample.csv", "resample.npz", "settings.json"]
    assert not _leftovers(tmp_path)
    patch = cp.PatchingResult.load(out / "patch.npz")  # patch_method auto: heads and MLPs by attribution,
    assert patch.method == "auto" and patch.raw.shape == (2, 2 + 8 + 4)  # the residual stream exactly
    assert patch.node_methods == ["exact" if n.kind == "resid" else "attribution" for n in patch.nodes]
    med_csv = pd.read_csv(out / "mediation.csv")
    assert set(med_csv["method"]) == {"eb:adjusted", "eb:unadjusted"}
    assert {"node", "kind", "layer", "value", "ci_low", "ci_high", "ess", "gamma", "status"} <= set(med_csv.columns)
    resample = cp.ResampleResult.load(out / "resample.npz")  # every node, topic-stratified, auto
    assert len(resample.nodes) == 4 and resample.stratified
    check = cp.Confirmation.load(out / "confirm.npz")
    assert check.nodes and all(how == "attribution" for how in check.methods)
    settings = json.loads((out / "settings.json").read_text())
    assert "attribution for heads (8), MLPs (2)" in settings["method: classic patching"]
    assert "exact for residual stream (4)" in settings["method: classic patching"]
    assert "own topic" in settings["method: resample AIE"] and "exact confirmation" in " ".join(settings)
    assert settings["n_prompts"] == 60 and settings["kinds"] == ["mlp", "head", "resid"]
    # the EB-AIE is of the resample AIE's metric: nodes whose floor exceeds the largest |resample AIE| are flagged
    med = cp.MediationResult.load(out / "mediation.npz")
    scale = float(np.nanmax(np.abs(resample.value)))
    assert med.adjusted.reliability["max_detectable"] == pytest.approx(scale)
    above = med.adjusted.detectable > scale
    assert all(("no estimator could tell" in r) == bool(a) for r, a in zip(med.adjusted.reason, above))
    assert f"{scale:.3g}" in settings["method: EB-AIE"] and "largest |resample AIE|" in settings["method: EB-AIE"]
    html = (out / "report.html").read_text()
    assert "Per-node effects" in html and "Agreement between methods" in html


def test_steps_the_dataset_cannot_support_are_skipped_with_a_note(tmp_path, model_dir, capsys):
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(3, 30)))
    code, _, err = _run(capsys, "run", "--model", str(model_dir), "--dataset", str(data), "--out",
                        str(tmp_path / "o"), "--steps", "patch,resample", "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "nothing to do" in err and "no clean/corrupt pairs" in err
    assert not (tmp_path / "o").exists() and not _leftovers(tmp_path)


# ----------------------------------------------------------------------------- help


def test_help_reads_well(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "demo" in out and "run" in out and "examples:" in out and "JSONL format" in out
    code, out, _ = _run(capsys, "run", "--help")
    assert code == 0
    for option in ("--model", "--dataset", "--out", "--kinds", "--positions", "--n-prompts", "--n-topics", "-K",
                   "--batch-size", "--seed"):
        assert option in out
    assert "(default: 0)" in out and "(default: None)" not in out
    code, out, _ = _run(capsys, "demo", "--help")
    assert code == 0 and "SmolLM2" in out


def test_negative_positions_need_no_equals_sign():
    args = cli.build_parser().parse_args(["run", "--model", "m", "--dataset", "d", "--out", "o",
                                          "--positions", "-1,-2", "--resid-positions", "-3"])
    assert args.positions == "-1,-2" and args.resid_positions == "-3"


def test_no_command_prints_help_and_returns_2(capsys):
    code, _, err = _run(capsys)
    assert code == 2 and "usage:" in err


# ----------------------------------------------------------------------------- bad input


def _bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "w3 w4 w5"}\n{"prompt": "w6 w7 w8"}\n{"prompt": "w9 w10",\n')
    return path


def _empty_jsonl(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    return path


def _not_a_model(tmp_path):
    path = tmp_path / "not-a-model"
    path.mkdir()
    (path / "weights.bin").write_text("x")
    return path


BAD = {
    "unknown model path": (lambda t, m, d: ["--model", str(t / "nowhere" / "model"), "--dataset", str(d)],
                           "no such model folder"),
    "folder without config.json": (lambda t, m, d: ["--model", str(_not_a_model(t)), "--dataset", str(d)],
                                   "not a Hugging Face model folder"),
    "unreachable hub name": (lambda t, m, d: ["--model", "no-such-org/no-such-model-xyz", "--dataset", str(d)],
                             "could not load this hub name"),
    "malformed JSONL line": (lambda t, m, d: ["--model", str(m), "--dataset", str(_bad_jsonl(t))],
                             "bad.jsonl:3: invalid JSON"),
    "empty dataset": (lambda t, m, d: ["--model", str(m), "--dataset", str(_empty_jsonl(t))], "has no prompts"),
    "missing dataset file": (lambda t, m, d: ["--model", str(m), "--dataset", str(t / "missing.jsonl")],
                             "no such file"),
    "unknown dataset name": (lambda t, m, d: ["--model", str(m), "--dataset", "profesions"],
                             "expected a built-in set"),
    "misspelt node kind": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--kinds", "mlp,haed"],
                           "--kinds: unknown node kind 'haed'; expected a comma-separated subset of mlp, head, resid"),
    "unknown step": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--steps", "patching"],
                     "unknown step 'patching'"),
    "positions not integers": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--positions", "-1,last"],
                               "--positions must be comma-separated integers"),
    "answer without wrong answer": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--answer", " w1"],
                                    "--answer and --wrong-answer go together"),
    "too few prompts": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--n-prompts", "1"],
                        "--n-prompts must be >= 2"),
    "missing required option": (lambda t, m, d: ["--dataset", str(d)], "the following arguments are required: --model"),
    "too few prompts for the EB-AIE's dims": (lambda t, m, d: ["--model", str(m), "--dataset", str(d),
                                                                "--n-prompts", "40", "--dims", "8"],
                                               "--n-prompts: the EB-AIE (mediate step) cannot run on the 40 prompts"),
    "resample nodes not a number": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--resample-nodes",
                                                     "some"], "--resample-nodes must be 'all' or an int"),
    "unknown patch method": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--patch-method", "fast"],
                             "invalid choice: 'fast'"),
    "position beyond the prompts": (lambda t, m, d: ["--model", str(m), "--dataset", str(d), "--resid-positions",
                                                     "-9,-1", "--steps", "mediate"],
                                    "fewer than the 9 tokens"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_line_exit_code_2_and_writes_nothing(case, tmp_path, model_dir, jsonl, capsys):
    make_args, message = BAD[case]
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "run", *make_args(tmp_path, model_dir, jsonl), "--out", str(out), "--quiet")
    assert code == 2
    assert err.count("\n") == 1, err
    assert message in err
    assert err.startswith("confounded-patching run")
    assert not out.exists() and not _leftovers(tmp_path)


def test_an_existing_output_folder_is_left_as_it_was_on_error(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, _ = _run(capsys, "run", "--model", str(model_dir), "--dataset", str(_bad_jsonl(tmp_path)), "--out",
                      str(out))
    assert code == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not _leftovers(tmp_path)


def test_out_that_is_a_file_is_rejected(tmp_path, model_dir, jsonl, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, _, err = _run(capsys, "run", "--model", str(model_dir), "--dataset", str(jsonl), "--out", str(target),
                        "--quiet")
    assert code == 2 and "is not a folder" in err and target.read_text() == "x"
