"""The HTML report: one offline file, plotly.js once, figures skipped with a note when they do not apply."""

import pytest

import confounded_patching as cp
from confounded_patching.report import write_report
from figures import classic, fake_med, model, nodes, resampled  # noqa: F401  (fixtures)


def test_report_is_one_offline_file_with_plotlyjs_once(tmp_path, classic, resampled, fake_med):
    from plotly.offline import get_plotlyjs

    path = write_report(tmp_path / "r.html", {"classic": classic, "resample": resampled, "mediation": fake_med},
                        title="Tiny <report>", notes="first <b>note</b>\n\nsecond", settings={"seed": 0})
    text = path.read_text()
    assert text.count(get_plotlyjs()[:300]) == 1
    assert "<script src=" not in text and 'src="https://' not in text
    for section in ("Summary", "Settings", "How to read this", "Per-node effects", "Localization",
                    "Weight diagnostics", "Agreement between methods"):
        assert f"<h2>{section}" in text
    assert "Tiny &lt;report&gt;" in text and "first &lt;b&gt;note&lt;/b&gt;" in text
    assert "exactly 0" in text and "non-additivity" in text
    assert text.count('class="plotly-graph-div"') >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_report_rejects_an_empty_dict(tmp_path):
    with pytest.raises(cp.InputError, match="non-empty dict"):
        write_report(tmp_path / "r.html", {})
    assert list(tmp_path.iterdir()) == []


def test_report_of_classic_patching_alone_skips_the_aie_figures(tmp_path, classic):
    text = write_report(tmp_path / "r.html", {"classic": classic}).read_text()
    assert "<h2>Per-node effects" in text
    assert "<h2>Localization" not in text and "<h2>Weight diagnostics" not in text
