"""The tutorial notebooks run top to bottom, offline, with small sizes; the committed files are clean.

Each notebook is written as a jupytext "percent" source (``notebooks/NN_name.py``, ``# %%`` cells) from
which the ``.ipynb`` is generated (``jupytext --update --to ipynb notebooks/NN_name.py``) and committed
without outputs. Each notebook runs in a fresh ``python3`` kernel (ipykernel, started with this
interpreter) with ``CP_NOTEBOOK_SMALL=1`` (tiny sizes) and
``HF_HUB_OFFLINE=1``; any cell error fails the test with the cell's
traceback. The notebooks that load SmolLM2 take ~20-40 s each, most of it
the model load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

# notebook -> what it needs beyond the package ("smollm2": the embedded model)
NEEDS = {
    "01_quickstart.ipynb": ("smollm2",),
    "02_nnsight_causal_mediation.ipynb": ("smollm2",),
    "03_why_deconfounding.ipynb": (),
    "04_transformer_lens.ipynb": ("smollm2", "transformer_lens"),
    "05_paper_setting.ipynb": ("smollm2",),
}
CELL_TIMEOUT = 600  # seconds per cell; the slowest cell (loading SmolLM2) takes ~20-40 s


def _notebook_files() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def _skip_unless_available(needs) -> None:
    for name in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    if "transformer_lens" in needs and importlib.util.find_spec("transformer_lens") is None:
        pytest.skip("transformer_lens is not installed")
    if "smollm2" in needs:
        import confounded_patching as cp

        try:
            cp.models.smollm2_path()
        except cp.ModelFileNotFound as err:  # pragma: no cover - CI installs it
            pytest.skip(f"embedded model not installed: {err}")


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    """``python3`` when it is registered; otherwise a kernel for this interpreter under a temporary prefix."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:  # pragma: no cover - ipykernel normally registers python3
        import subprocess

        prefix = tmp_path_factory.mktemp("kernels")
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name",
                        "cp-notebooks"], check=True, capture_output=True)
        paths = [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in paths if p)
        return "cp-notebooks"


def test_every_notebook_is_listed():
    assert _notebook_files() == sorted(NEEDS), "add new notebooks to NEEDS (and to docs/notebooks.md)"


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_committed_notebook_is_clean_and_built_from_source(name):
    """Stored without outputs, valid, with the Colab cell and the size switch, and equal to its jupytext source."""
    nbformat = pytest.importorskip("nbformat")
    jupytext = pytest.importorskip("jupytext")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs; clear them"
    assert '"google.colab" in sys.modules' in code[0].source and "%pip install" in code[0].source
    assert any('os.environ.get("CP_NOTEBOOK_SMALL") == "1"' in c.source for c in code[:3])
    assert sum(bool(re.search(r"^FULL = False\b", c.source, re.M)) for c in code[:3]) == 1, \
        f"{name}: one switch, FULL = False, for the bigger sizes"

    source = NOTEBOOKS / name.replace(".ipynb", ".py")
    built = jupytext.read(source)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{name} differs from {source.name}: run `jupytext --update --to ipynb notebooks/{source.name}`"


def _documented_repo_url() -> str:
    """The repository URL the README gives for installing elsewhere (``pip install "git+URL"``)."""
    urls = set(re.findall(r'pip install "git\+(https://[^"\s]+)"', (ROOT / "README.md").read_text()))
    assert len(urls) == 1, f"the README must give one repository URL to install from; found {sorted(urls)}"
    return urls.pop()


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_colab_cell_installs_from_the_documented_repository(name):
    """The first cell installs the package from REPO_URL, the one address the README and docs/notebooks.md give."""
    nbformat = pytest.importorskip("nbformat")
    url = _documented_repo_url()
    assert f'pip install "git+{url}"' in (ROOT / "docs" / "notebooks.md").read_text()
    first = next(c for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells if c.cell_type == "code").source
    assert f'REPO_URL = "{url}"' in first, f"{name}: REPO_URL differs from the README's {url}"
    install = [line.strip() for line in first.splitlines() if line.strip().startswith("%pip install")]
    assert len(install) == 1 and "git+{REPO_URL}" in install[0], install
    assert "confounded-patching" in install[0].split("@")[0]


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_source_is_python_and_uses_public_names_only(name):
    """The jupytext source compiles (magics stay comments there) and reaches the library only through ``cp``."""
    source = (NOTEBOOKS / name.replace(".ipynb", ".py")).read_text()
    compile(source, name, "exec")
    assert not re.findall(r"(?:from|import) confounded_patching\.", source)
    assert "from confounded_patching import" not in source


def _execute(name: str, kernel: str, monkeypatch) -> tuple[object, float]:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on the first error
    return nb, time.perf_counter() - start


def _check_ran(nb, name: str) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: a cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    figures = [o for c in code for o in c.outputs
               if o.output_type in ("display_data", "execute_result") and
               any("plotly" in key for key in o.get("data", {}))]
    assert figures, f"{name}: no plotly figure was shown"
    for o in figures:  # every figure is a valid plotly JSON payload
        payload = next(v for k, v in o["data"].items() if "plotly" in k and "json" in k)
        json.dumps(payload)


@pytest.mark.parametrize("name", [n for n in sorted(NEEDS) if not NEEDS[n]])
def test_notebook_runs_without_a_model(name, kernel_name, monkeypatch):
    _skip_unless_available(NEEDS[name])
    nb, seconds = _execute(name, kernel_name, monkeypatch)
    _check_ran(nb, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(NEEDS) if NEEDS[n]])
def test_notebook_runs_with_smollm2(name, kernel_name, monkeypatch):
    _skip_unless_available(NEEDS[name])
    nb, seconds = _execute(name, kernel_name, monkeypatch)
    _check_ran(nb, name)
