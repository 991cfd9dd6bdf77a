"""The HTML report: one offline file, plotly.js once, the headline first, figures skipped with a note."""

import re

import numpy as np

import pytest

import confounded_patching as cp
import tiny
from confounded_patching.interventions.confirm import CAUTION, MIN_NODES, TRUST
from confounded_patching.report import EB_CAVEAT, HOW_TO_READ, WIDTH, write_report
from figures import METRIC, classic, fake_med, model, nodes, resampled  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def auto(model, nodes):
    hf, tok = model
    prompts = tiny.prompts(16, seed=2, lo=4, hi=7)
    fast = cp.resample(hf, prompts, nodes, METRIC, n_pairs=8, strata=[i % 2 for i in range(16)], method="auto",
                       tokenizer=tok, progress=False)
    return fast, cp.confirm(hf, prompts, fast, METRIC, top_k=5, n_random=3, tokenizer=tok, progress=False)


def _positions(text, *needles):
    return [text.index(n) for n in needles]


def test_report_is_one_offline_file_with_plotlyjs_once(tmp_path, classic, resampled, fake_med):
    from plotly.offline import get_plotlyjs

    path = write_report(tmp_path / "r.html", {"classic": classic, "resample": resampled, "mediation": fake_med},
                        title="Tiny <report>", notes="first <b>note</b>\n\nsecond", settings={"seed": 0})
    text = path.read_text()
    assert text.count(get_plotlyjs()[:300]) == 1
    assert "<script src=" not in text and 'src="https://' not in text
    for section in ("Headline", "Per-node effects", "Agreement between methods", "Localization",
                    "Weight diagnostics"):
        assert f"{section}</h2>" in text or f">{section}" in text
    assert "Tiny &lt;report&gt;" in text and "first &lt;b&gt;note&lt;/b&gt;" in text
    assert "exactly 0" in text and "non-additivity" in text
    assert text.count('class="plotly-graph-div"') >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_the_headline_comes_first_and_the_settings_last_and_collapsed(tmp_path, classic, auto, fake_med):
    fast, check = auto
    text = write_report(tmp_path / "r.html", {"patch": classic, "resample": fast, "confirm": check,
                                              "mediation": fake_med}, settings={"seed": 0}).read_text()
    body = text[text.index("<body>"):]
    order = _positions(body, 'id="headline"', 'class="caveat"', 'id="effects"', 'id="diagnostics-mediation"',
                       'id="how-to-read"', 'id="settings"')
    assert order == sorted(order)
    assert re.search(r"<details><summary id=\"settings\">Settings</summary>", body)
    assert re.search(r"<details><summary id=\"how-to-read\">How to read this</summary>", body)
    # the headline: one row per method in the study's order, each with a verdict badge
    headline = body[body.index('id="headline"'):body.index('id="effects"')]
    rows = re.findall(r"<tr><td><b>([^<]+)</b>", headline)
    assert rows == ["Classic patching (denoise)", "Resample AIE", "EB-AIE adjusted", "EB-AIE unadjusted"]
    assert headline.count('class="verdict"') == 4
    assert f">{check.verdict}</span>" in headline
    assert "Exact confirmation" in headline and check.summary() in headline
    assert EB_CAVEAT in headline.replace("&#x27;", "'")


def test_the_verdict_rule_in_the_text_is_the_rule_in_the_code():
    assert f"at least {TRUST:g} on at least {MIN_NODES} nodes" in HOW_TO_READ
    assert f"both at least {CAUTION:g}" in HOW_TO_READ


def test_every_figure_fits_the_page_width(tmp_path, classic, auto, fake_med):
    fast, check = auto
    text = write_report(tmp_path / "r.html", {"patch": classic, "resample": fast, "confirm": check,
                                              "mediation": fake_med}).read_text()
    widths = [int(w) for w in re.findall(r'"width":\s*(\d+)', text)]
    assert widths and max(widths) <= WIDTH
    assert "max-width:1240px" in text


def test_a_first_order_aie_without_confirmation_says_so(tmp_path, auto):
    fast, _ = auto
    text = write_report(tmp_path / "r.html", {"resample": fast}).read_text()
    assert "not confirmed exactly in this run" in text and ">not checked</span>" in text


def test_report_rejects_an_empty_dict(tmp_path):
    with pytest.raises(cp.InputError, match="non-empty dict"):
        write_report(tmp_path / "r.html", {})
    assert list(tmp_path.iterdir()) == []


def test_report_of_classic_patching_alone_skips_the_aie_figures(tmp_path, classic):
    text = write_report(tmp_path / "r.html", {"classic": classic}).read_text()
    assert 'id="effects"' in text and 'id="headline"' in text
    assert 'id="localization"' not in text and "Weight diagnostics" not in text
    assert "About the EB-AIE" not in text


def test_the_eb_caveat_gives_the_smallest_detectable_effect_against_the_resample_aie(tmp_path, resampled, nodes):
    from figures import FakeMediation

    med = FakeMediation(nodes)
    med.df["detectable"] = [0.5 + 0.001 * i for i in range(len(med.df))]
    text = write_report(tmp_path / "r.html", {"resample": resampled, "mediation": med}).read_text()
    caveat = text[text.index("About the EB-AIE"):]
    caveat = caveat[:caveat.index("</p>")]
    det = med.df["detectable"].to_numpy()
    assert f"no estimator could tell an AIE below {float(np.median(det)):.3g}" in caveat
    top = float(np.nanmax(np.abs(resampled.to_dataframe()["value"].to_numpy(dtype=float))))
    assert f"the largest |resample AIE| here is {top:.3g}" in caveat
    assert f"detectable at {int(np.sum(det <= top))} of {len(det)} EB-AIE node estimates" in caveat
    # without the column (older results), the caveat is the plain text
    plain = write_report(tmp_path / "p.html", {"resample": resampled, "mediation": FakeMediation(nodes)}).read_text()
    assert "no estimator could tell" not in plain
