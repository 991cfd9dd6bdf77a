"""The HTML report in a real browser: headless Chromium draws every figure, with no JavaScript error.

Chromium is Debian's ``chromium`` package, installed by ``.ci/run`` where
apt-get is available; without it these tests skip and say why.
"""

import re
import shutil
import subprocess

import numpy as np
import pytest

import confounded_patching as cp
import tiny
from confounded_patching.report import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]
METRIC = cp.metrics.logit_diff(10, 11)


def _find():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = _find()
    if path is None:
        reason = ("headless Chromium is not installed (none of chromium, chromium-browser, google-chrome, "
                  "google-chrome-stable is on PATH); .ci/run installs it with apt-get")
        print(reason)
        pytest.skip(reason)
    return path


def _open(chromium, page, tmp_path, *extra):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _js_errors(stderr: str) -> list:
    """Console lines that report an error (Chromium logs the page's console to stderr as ``CONSOLE``)."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    nodes = (cp.nodes(hf, kinds=("mlp", "head"), positions=(-1,)) + cp.nodes(hf, kinds=("resid",),
                                                                              positions=(-2, -1)))
    clean = ["w5 w6 w7 w8 w9", "w11 w12 w13 w14 w15"]
    corrupt = ["w5 w6 w30 w8 w9", "w11 w40 w13 w14 w15"]
    classic = cp.patch(hf, clean, corrupt, nodes, METRIC, tokenizer=tok, progress=False)
    prompts = tiny.prompts(40, seed=3, lo=4, hi=7)
    topics = [i % 2 for i in range(40)]
    resampled = cp.resample(hf, prompts, nodes, METRIC, n_pairs=6, strata=topics, method="auto", tokenizer=tok,
                            progress=False)
    check = cp.confirm(hf, prompts, resampled, METRIC, top_k=4, n_random=2, tokenizer=tok, progress=False)
    med = cp.mediate(hf, prompts, nodes, outcome=METRIC, n_topics=2, K=10, d_q=2, d_n=2, n_boot=10, tokenizer=tok,
                     progress=False)
    path = tmp_path_factory.mktemp("report") / "report.html"
    results = {"patch": classic, "resample": resampled, "confirm": check, "mediation": med}
    write_report(path, results, title="Browser test", settings={"seed": 0})
    return path, results


def _drawable(results) -> tuple[int, int]:
    """(heatmap layers with at least one finite cell, of which no-value masks) in the report's compare figure."""
    fig = cp.plot.compare(results["patch"], results["resample"], results["mediation"],
                          confirmation=results["confirm"])
    drawn = [t for t in fig.data if t.type == "heatmap" and np.isfinite(np.asarray(t.z, dtype=float)).any()]
    return len(drawn), sum(t.name.startswith("not identifiable") for t in drawn)


def test_console_errors_are_detected(chromium, tmp_path):
    """The check below would catch a broken page (guards against a silently blind test)."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>no_such_function();</script></body></html>")
    result = _open(chromium, page, tmp_path, "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in _js_errors(result.stderr)), result.stderr[-2000:]


def test_report_draws_every_figure_without_javascript_errors(chromium, report, tmp_path):
    report, results = report
    result = _open(chromium, report, tmp_path, "--dump-dom")
    dom = result.stdout
    assert not _js_errors(result.stderr), _js_errors(result.stderr)
    n_figures = report.read_text().count('class="plotly-graph-div"')
    assert n_figures >= 5  # compare, localization, diagnostics, agreement scatters
    assert dom.count('class="main-svg"') >= 2 * n_figures  # plotly drew an <svg> for every figure
    # compare: 3 rows (resid, heads, MLP) x 4 columns of heatmaps, each layer drawn as an image in a "hm" group;
    # cells without a value (infeasible, not identifiable) are a layer of their own, so every panel draws
    layers, masks = _drawable(results)
    assert masks > 0  # the tiny model's adjusted EB-AIE has infeasible nodes
    assert dom.count('class="hm"') == layers
    assert len(re.findall(r'<g class="hm"[^>]*><image', dom)) == layers
    assert "not identifiable / infeasible balance" in dom and "not computed" in dom
    assert "colorbar" in dom and "Classic patching (denoise)" in dom and "EB-AIE adjusted" in dom
    assert "exact resample AIE (outlined)" in dom and "first order (heads) + exact (MLP, resid)" in dom


def test_report_fits_a_1280_pixel_window(chromium, report, tmp_path):
    """No horizontal scroll in a 1,280 px window (1,265 px of it beside a scrollbar); the check itself can fail."""
    report, _ = report
    probe = "<script>window.addEventListener('load', () => document.body.setAttribute('data-scroll-width', " \
            "document.documentElement.scrollWidth))</script></body>"
    widths = {}
    for name, extra in (("report", ""), ("wide", '<div style="width:1400px">x</div>')):
        page = tmp_path / f"{name}.html"
        page.write_text(report.read_text().replace("</body>", extra + probe))
        dom = _open(chromium, page, tmp_path, "--dump-dom", "--window-size=1265,1000").stdout
        widths[name] = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    assert widths["wide"] > 1265  # a page that is too wide is detected
    assert widths["report"] <= 1265, widths


def test_report_screenshot(chromium, report, tmp_path):
    report, _ = report
    shot = tmp_path / "report.png"
    result = _open(chromium, report, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000",
                   "--hide-scrollbars")
    assert shot.exists(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 4000)
    assert len(data) > 100_000  # a page of tables and heatmaps, not a blank one
    assert not _js_errors(result.stderr)
    print(f"screenshot: {shot}")
