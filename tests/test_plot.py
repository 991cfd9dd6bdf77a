"""Figures of confounded_patching.plot on results from tiny random models."""

import numpy as np
import pandas as pd
import pytest

import confounded_patching as cp
import tiny
from confounded_patching import plot
from confounded_patching.estimation.reliability import ReliabilityRule
from confounded_patching.report import write_report
from figures import METRIC, N_HEADS, N_LAYERS, FakeMediation, classic, fake_med, model, nodes, resampled  # noqa: F401


def _heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def _panel_traces(fig):
    """{(row, col): heatmap trace} from the subplot grid."""
    out = {}
    rows, cols = fig._get_subplot_rows_columns()
    for r in rows:
        for c in cols:
            sp = fig.get_subplot(r, c)
            xname = sp.xaxis.plotly_name.replace("axis", "")
            for t in _heatmaps(fig):
                if t.xaxis == xname and not t.name.startswith("not identifiable"):  # the value layer
                    out[(r, c)] = t
    return out


def test_compare_has_a_column_per_method_and_a_row_per_node_family(classic, resampled, fake_med):
    fig = plot.compare(classic, resampled, fake_med)
    # columns: classic, resample, EB unadjusted, EB adjusted; rows: resid, heads@-2, heads@-1, MLP
    titles = [a.text.split("<br>")[0] for a in fig.layout.annotations]
    assert titles[:4] == ["<b>Classic patching (denoise)</b>", "<b>Resample AIE</b>", "<b>EB-AIE adjusted</b>",
                          "<b>EB-AIE unadjusted</b>"]
    assert len(_heatmaps(fig)) == 4 * 4
    ylabels = [fig.get_subplot(r, 1).yaxis.title.text for r in range(1, 5)]
    assert ylabels == ["Residual stream<br>layer", "Attention heads @ pos -2<br>layer",
                       "Attention heads @ pos -1<br>layer", "MLP<br>layer"]
    panels = _panel_traces(fig)
    assert np.asarray(panels[(1, 1)].z).shape == (N_LAYERS, 3)       # layer x position
    assert np.asarray(panels[(2, 1)].z).shape == (N_LAYERS, N_HEADS)  # layer x head
    assert np.asarray(panels[(4, 1)].z).shape == (N_LAYERS, 1)        # MLP strip


def test_layer_zero_is_at_the_top_and_axes_are_shared_within_a_row(classic, fake_med):
    fig = plot.compare(classic, fake_med)
    for r in range(1, 5):
        first = fig.get_subplot(r, 1)
        first_x = first.xaxis.plotly_name.replace("axis", "")
        first_y = first.yaxis.plotly_name.replace("axis", "")
        for c in range(1, 4):
            sp = fig.get_subplot(r, c)
            assert sp.yaxis.autorange == "reversed"
            if c > 1:
                assert sp.xaxis.matches == first_x
                assert sp.yaxis.matches == first_y
    panels = _panel_traces(fig)
    assert list(panels[(1, 1)].y) == [0, 1]


def test_heatmap_values_match_the_results(classic, fake_med):
    fig = plot.compare(classic, fake_med)
    panels = _panel_traces(fig)
    score = dict(zip([n.label for n in classic.nodes], classic.score))
    z = np.asarray(panels[(4, 1)].z, dtype=float)  # MLP strip, classic
    assert z[1, 0] == pytest.approx(score["MLP1@-1"])
    z = np.asarray(panels[(3, 2)].z, dtype=float)  # heads @ -1, EB adjusted
    df = fake_med.df
    want = df[(df.method == "eb:adjusted") & (df.node == "L1H2@-1")].value.item()
    assert z[1, 2] == pytest.approx(want)


def test_colour_range_is_shared_per_row_among_columns_of_the_same_units(classic, resampled, fake_med):
    fig = plot.compare(classic, resampled, fake_med)
    panels = _panel_traces(fig)
    for r in range(1, 5):
        axes = [panels[(r, c)].coloraxis for c in range(1, 5)]
        # patching score (normalized) has its own range; resample and both EB columns (units of y) share one
        assert axes[1] == axes[2] == axes[3] != axes[0]
        for c_group in ([1], [2, 3, 4]):
            ax = fig.layout[axes[c_group[0] - 1]]
            values = np.concatenate([np.asarray(panels[(r, c)].z, dtype=float).ravel() for c in c_group])
            assert ax.cmin == -ax.cmax  # centred at 0
            assert ax.cmax == pytest.approx(np.nanmax(np.abs(values)))
            assert ax.colorscale[0][1] == "rgb(103,0,31)"  # RdBu: low = red, high = blue
    # rows differ
    assert panels[(1, 1)].coloraxis != panels[(2, 1)].coloraxis


def test_zmax_overrides_the_colour_range(classic, fake_med):
    fig = plot.compare(classic, fake_med, zmax={"score": 1.0})
    panels = _panel_traces(fig)
    assert fig.layout[panels[(1, 1)].coloraxis].cmax == 1.0
    assert fig.layout[panels[(1, 2)].coloraxis].cmax != 1.0
    with pytest.raises(cp.InputError, match="zmax must be"):
        plot.compare(classic, zmax={"scores": 1.0})


def test_colourbar_titles_state_sign_and_normalization(classic, resampled):
    fig = plot.compare(classic, resampled)
    panels = _panel_traces(fig)
    score_title = fig.layout[panels[(1, 1)].coloraxis].colorbar.title.text
    aie_title = fig.layout[panels[(1, 2)].coloraxis].colorbar.title.text
    assert "(patched − corrupt) / (clean − corrupt)" in score_title and "blue" in score_title
    assert METRIC.name in aie_title and "blue > 0" in aie_title


def test_position_axes_use_token_labels_or_pos_fallback(classic, fake_med):
    fig = plot.compare(classic, fake_med)
    ticks = list(fig.get_subplot(1, 1).xaxis.ticktext)
    # the first prompt's tokens ("w7_2") and the position aligned from the end of every prompt
    assert ticks == [f"{tok}<br>pos {p}" for tok, p in zip(classic.tokens[-3:], (-3, -2, -1))]
    fig = plot.compare(fake_med)                         # no tokens anywhere
    assert list(fig.get_subplot(1, 1).xaxis.ticktext) == ["pos -3", "pos -2", "pos -1"]
    assert list(fig.get_subplot(2, 1).xaxis.ticktext) == ["0", "1", "2", "3"]


def test_hover_shows_node_value_interval_and_diagnostics(fake_med, resampled):
    fig = plot.compare(resampled, fake_med)
    panels = _panel_traces(fig)
    text = panels[(3, 2)].text[1][2]  # heads @ -1, EB adjusted, L1H2
    assert "L1H2@-1" in text and "95% interval" in text and "ESS" in text and "γ" in text and "status" in text
    z = np.asarray(panels[(3, 1)].z, dtype=float)   # resample was run on a sample of nodes
    missing = np.argwhere(np.isnan(z))
    assert len(missing) > 0
    i, j = missing[0]
    assert panels[(3, 1)].text[i][j] == "not computed"


def test_titles_argument_checks_its_length(classic, fake_med):
    fig = plot.compare(classic, fake_med, titles=["A", "B", "C"])
    assert [a.text.split("<br>")[0] for a in fig.layout.annotations][:3] == ["<b>A</b>", "<b>B</b>", "<b>C</b>"]
    fig = plot.compare(classic, fake_med, titles={"eb:adjusted": "deconfounded"})
    assert "<b>deconfounded</b>" in [a.text.split("<br>")[0] for a in fig.layout.annotations]
    with pytest.raises(cp.InputError, match=r"one title per column \(3"):
        plot.compare(classic, fake_med, titles=["A", "B"])


def test_compare_rejects_what_is_not_a_result():
    with pytest.raises(cp.InputError, match="PatchingResult"):
        plot.compare(object())
    with pytest.raises(cp.InputError, match="lacks"):
        plot.compare(pd.DataFrame({"node": ["x"], "value": [1.0]}))


def test_localization_reports_the_top_ten_percent_share():
    rows = [dict(node=f"MLP{i}@-1", kind="mlp", layer=i, head=None, pos=-1, method=m, value=v, metric="y")
            for m, vals in (("eb:unadjusted", [10.0] + [1.0] * 19), ("eb:adjusted", [1.0] * 20))
            for i, v in enumerate(vals)]
    fig = plot.localization(pd.DataFrame(rows))
    shares = fig.layout.meta["top_share"]
    assert shares["EB-AIE unadjusted"] == pytest.approx(11 / 29)   # top 2 of 20 nodes: 10 + 1 of 29
    assert shares["EB-AIE adjusted"] == pytest.approx(0.1)
    assert "38% (EB-AIE unadjusted)" in fig.layout.title.text and "10% (EB-AIE adjusted)" in fig.layout.title.text
    lines = [t for t in fig.data if t.name == "EB-AIE unadjusted" and t.xaxis == "x"]
    assert list(lines[0].y[:2]) == [10.0, 1.0]  # sorted by magnitude


def test_diagnostics_groups_nodes_by_layer_and_draws_the_reliability_thresholds(fake_med, nodes):
    df = fake_med.to_dataframe()
    df["query_corr"] = 0.5
    df["pair_ess"] = 0.01
    df["n"] = 100
    df["ess_x"] = 30.0
    df["reliable"] = df["status"] != "infeasible"
    df.loc[1, "reliable"] = False
    df.loc[1, "reason"] = "node nearly determined by the query (canonical correlation 0.900 > 0.7)"
    df.loc[df["status"] == "infeasible", "value"] = np.nan
    fig = plot.diagnostics(df)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:4] == ["canonical correlation of node and query", "pair-weight ESS (share of n·K, log)",
                          "ESS of the node's weights (share of prompts)", "imbalance ‖Gᵀw‖∞ (log)"]
    rule = fig.layout.meta["rule"]
    assert rule == ReliabilityRule().to_dict()
    lines = sorted(round(sh.y0, 6) for sh in fig.layout.shapes if sh.line.dash == "dash")
    assert lines == sorted([rule["max_query_corr"], rule["min_pair_ess"], rule["min_ess_x"]])
    points = [t for t in fig.data if t.name == "EB-AIE adjusted" and t.x is not None and len(t.x) > 1][0]
    layers = df[df.method == "eb:adjusted"]["layer"].to_numpy()
    assert np.all(np.abs(np.asarray(points.x) - layers) < 0.5)  # x = the node's layer, kinds side by side
    colours = list(points.marker.color)
    assert colours[0] == plot.summaries.RELIABILITY_COLORS["no value"]
    assert colours[1] == plot.summaries.RELIABILITY_COLORS["unreliable"]
    assert colours[2] == plot.summaries.RELIABILITY_COLORS["reliable"]
    assert fig.layout.meta["reasons"]["EB-AIE adjusted"] == {"node nearly determined by the query": 1}
    assert "EB-AIE adjusted: 2 of" in fig.layout.title.subtitle.text


def test_diagnostics_needs_diagnostic_columns(classic):
    with pytest.raises(cp.InputError, match="ess / imbalance / gamma"):
        plot.diagnostics(classic)


def test_agreement_gives_spearman_and_pearson(nodes):
    base = [dict(node=n.label, kind=n.kind, layer=n.layer, head=getattr(n, "head", None), pos=n.pos, method="a",
                 value=float(k - 5)) for k, n in enumerate(nodes)]
    cubed = [{**r, "method": "b", "value": r["value"] ** 3} for r in base]
    fig = plot.agreement(pd.DataFrame(base), pd.DataFrame(cubed))
    assert fig.layout.meta["spearman"] == pytest.approx(1.0)
    assert 0.8 < fig.layout.meta["pearson"] < 1.0
    assert "Spearman ρ = 1.00" in fig.layout.title.text
    assert f"Pearson r = {fig.layout.meta['pearson']:.2f}" in fig.layout.title.text
    with pytest.raises(cp.InputError, match="no node in common"):
        plot.agreement(pd.DataFrame(base[:2]), pd.DataFrame(cubed[3:]))


def test_agreement_picks_the_adjusted_estimate_of_a_mediation(classic, fake_med):
    fig = plot.agreement(classic, fake_med)
    assert fig.layout.title.text.startswith("EB-AIE adjusted vs Classic patching")
    fig = plot.agreement(fake_med, fake_med, method_a="eb:unadjusted")
    assert "EB-AIE adjusted vs EB-AIE unadjusted" in fig.layout.title.text
    with pytest.raises(cp.InputError, match="no method 'nope'"):
        plot.agreement(classic, fake_med, method_b="nope")


def test_save_html_is_self_contained(tmp_path, classic):
    path = plot.save(plot.compare(classic), tmp_path / "fig.html")
    text = path.read_text()
    assert "<script src=" not in text and 'src="https://' not in text  # no CDN
    assert len(text) > 1_000_000  # plotly.js is inside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.html"]
    with pytest.raises(cp.InputError, match=".html"):
        plot.save(plot.compare(classic), tmp_path / "fig.txt")


def test_save_png_without_kaleido_says_how_to_install(tmp_path, classic):
    import importlib.util

    if importlib.util.find_spec("kaleido") is not None:  # pragma: no cover - depends on the environment
        pytest.skip("kaleido is installed; this test covers the message when it is not")
    with pytest.raises(ImportError, match="pip install kaleido"):
        plot.save(plot.compare(classic), tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:the confounder model")
def test_figures_of_a_real_mediation_result(model, nodes, tmp_path):
    hf, tok = model
    prompts = tiny.prompts(60, seed=1, lo=4, hi=7)
    med = cp.mediate(hf, prompts, nodes, outcome=METRIC, n_topics=2, K=10, d_q=2, d_n=2, n_boot=10,
                     tokenizer=tok, progress=False)
    fig = plot.compare(med)
    assert [a.text.split("<br>")[0] for a in fig.layout.annotations][:2] == ["<b>EB-AIE adjusted</b>",
                                                                               "<b>EB-AIE unadjusted</b>"]
    values = np.asarray(_panel_traces(fig)[(4, 1)].z, dtype=float)
    df = med.to_dataframe()
    mlp1 = df[(df.method == "eb:adjusted") & (df.node == "MLP1@-1")].value.item()
    assert values[1, 0] == pytest.approx(mlp1, nan_ok=True)
    plot.diagnostics(med)
    loc = plot.localization(med)
    assert set(loc.layout.meta["top_share"]) == {"EB-AIE unadjusted", "EB-AIE adjusted"}
    write_report(tmp_path / "r.html", {"mediation": med})
    assert (tmp_path / "r.html").stat().st_size > 1_000_000


def test_nodes_patched_at_every_position_get_their_own_labels():
    rows = [dict(node=f"L{l}H{h}", kind="head", layer=l, head=h, pos=None, method="patch:exact", value=0.1 * h,
                 direction="denoise") for l in range(2) for h in range(3)]
    rows += [dict(node=f"R{l}", kind="resid", layer=l, head=None, pos=None, method="patch:exact", value=1.0,
                  direction="denoise") for l in range(2)]
    fig = plot.compare(pd.DataFrame(rows))
    assert fig.get_subplot(1, 1).yaxis.title.text.startswith("Residual stream")
    assert list(fig.get_subplot(1, 1).xaxis.ticktext) == ["all positions"]
    assert fig.get_subplot(2, 1).yaxis.title.text.startswith("Attention heads @ all positions")


def test_cells_without_a_value_are_drawn_apart_from_cells_not_computed(nodes):
    """An all-infeasible panel still draws: its own dark layer with a white ×, and its own legend entry."""
    rows = [dict(node=n.label, kind=n.kind, layer=n.layer, head=getattr(n, "head", None), pos=n.pos,
                 method="eb:adjusted", value=float("nan") if n.kind == "head" else 0.1,
                 status="infeasible" if n.kind == "head" else "converged", metric="y") for n in nodes]
    fig = plot.compare(pd.DataFrame(rows))
    masks = [t for t in fig.data if t.type == "heatmap" and t.name.startswith("not identifiable")]
    values = [t for t in fig.data if t.type == "heatmap" and not t.name.startswith("not identifiable")]
    assert len(values) == 4 and len(masks) == 2  # the two head rows (pos -2, -1) have no value at all
    for mask in masks:
        z = np.asarray(mask.z, dtype=float)
        assert np.isfinite(z).any() and mask.colorscale[0][1] == mask.colorscale[-1][1] != "#cfcfcf"
    crosses = [t for t in fig.data if t.type == "scatter" and t.name.startswith("not identifiable") and not t.showlegend]
    assert sum(len(t.x) for t in crosses) == sum(n.kind == "head" for n in nodes)
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["not computed", "not identifiable / infeasible balance"]
    head_hover = next(t for t in masks).text
    assert any("status infeasible" in cell for line in head_hover for cell in line)


@pytest.fixture(scope="module")
def auto(model, nodes):
    """A topic-stratified resample AIE with first-order heads and exact MLP / residual nodes, and its confirmation."""
    hf, tok = model
    prompts = tiny.prompts(16, seed=2, lo=4, hi=7)
    topics = [i % 2 for i in range(16)]
    fast = cp.resample(hf, prompts, nodes, METRIC, n_pairs=8, strata=topics, method="auto", tokenizer=tok,
                       progress=False)
    check = cp.confirm(hf, prompts, fast, METRIC, top_k=5, n_random=3, tokenizer=tok, progress=False)
    return fast, check


def _header(fig, c):
    return fig.layout.annotations[c - 1].text


def test_the_resample_column_says_how_it_was_computed_and_outlines_its_exact_cells(auto, classic, fake_med):
    fast, check = auto
    fig = plot.compare(classic, fast, fake_med, confirmation=check)
    head = _header(fig, 2)
    assert fast.tag == "resample:stratified:auto"
    assert "interventional · topic-stratified" in head and "first order (heads) + exact (MLP, resid)" in head
    assert f"{len(check.nodes)} confirmed" in head and f"confirmed exactly: {check.verdict}" in head
    assert "observational (the paper's estimator)" in _header(fig, 3)
    exact = {n.label for n, how in zip(fast.nodes, fast.node_methods) if how == "exact"}
    exact |= {n.label for n in check.nodes}
    assert len(fig.layout.shapes) == len(exact)  # one outline per exact cell, in the resample column only
    assert {sh.xref for sh in fig.layout.shapes} <= {fig.get_subplot(r, 2).xaxis.plotly_name.replace("axis", "")
                                                   for r in range(1, 5)}
    # confirmed cells show the exact value; the hover keeps the first-order estimate
    panels = _panel_traces(fig)
    value = dict(zip([n.label for n in check.nodes], check.exact))
    estimate = dict(zip([n.label for n in check.nodes], check.estimate))
    head_node = next(n for n in check.nodes if n.kind == "head" and n.pos == -1)
    z = np.asarray(panels[(3, 2)].z, dtype=float)
    assert z[head_node.layer, head_node.head] == pytest.approx(value[head_node.label])
    assert z[head_node.layer, head_node.head] != pytest.approx(estimate[head_node.label])
    hover = panels[(3, 2)].text[head_node.layer][head_node.head]
    assert "computed: exact (confirmation)" in hover and "first-order estimate" in hover
    legend = [t.name for t in fig.data if t.showlegend]
    assert "exact resample AIE (outlined)" in legend
    # a Confirmation among the results is the same as confirmation=
    same = plot.compare(classic, check, fast, fake_med)
    assert _header(same, 2) == head
    assert fig.layout.meta["agreement"]["Resample AIE"]["verdict"] == check.verdict


def test_agreement_of_each_column_with_the_exact_values_of_the_run(auto, classic, fake_med):
    from scipy.stats import spearmanr

    fast, check = auto
    cols = plot.summaries.assess(plot.frames.columns((classic, fast, fake_med), confirmation=check), check)
    ref = {n.label: v for n, v, how in zip(fast.nodes, fast.value, fast.node_methods) if how == "exact"}
    ref.update({n.label: v for n, v in zip(check.nodes, check.exact)})
    assert plot.summaries.exact_reference(cols) == pytest.approx(ref)
    by_title = {c.title: c for c in cols}
    assert by_title["Resample AIE"].agreement["spearman_abs"] == pytest.approx(check.agreement["spearman_abs"])
    df = fake_med.to_dataframe()
    adj = df[df.method == "eb:adjusted"].set_index("node")["value"]
    labels = [n for n in ref if np.isfinite(adj[n])]
    want = spearmanr(np.abs([adj[n] for n in labels]), np.abs([ref[n] for n in labels])).statistic
    a = by_title["EB-AIE adjusted"].agreement
    assert a["spearman_abs"] == pytest.approx(want) and a["n"] == len(labels) and a["role"] == "compared"
    assert a["verdict"] in ("trust", "caution", "do not trust") and a["line"].startswith(a["verdict"])
    score = by_title["Classic patching (denoise)"].agreement
    assert score["signed"] is False  # a patching score is compared by |value|
    s = dict(zip([n.label for n in classic.nodes], classic.score))
    x, y = np.abs([s[n] for n in ref]), np.abs(list(ref.values()))
    assert score["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_without_exact_values_nothing_is_called_trusted(classic, fake_med):
    fig = plot.compare(classic, fake_med)
    for a in fig.layout.meta["agreement"].values():
        assert a["verdict"] == "not checked"
    assert "no exact AIE to check against" in _header(fig, 1)


def test_a_confirmation_of_a_result_not_shown_is_refused(auto, classic):
    _, check = auto
    with pytest.raises(cp.InputError, match="no column is one"):
        plot.compare(classic, confirmation=check)
    with pytest.raises(cp.InputError, match="at most one Confirmation"):
        plot.compare(classic, check, confirmation=check)


def test_unreliable_values_carry_a_dot(nodes):
    rows = [dict(node=n.label, kind=n.kind, layer=n.layer, head=getattr(n, "head", None), pos=n.pos,
                 method="eb:adjusted", value=0.1 * (k + 1), reliable=k % 2 == 0, reason="" if k % 2 == 0 else "why",
                 metric="y") for k, n in enumerate(nodes)]
    fig = plot.compare(pd.DataFrame(rows))
    dots = [t for t in fig.data if t.type == "scatter" and t.name.startswith("unreliable") and not t.showlegend]
    assert sum(len(t.x) for t in dots) == sum(k % 2 == 1 for k in range(len(nodes)))
    assert any(t.name.startswith("unreliable") and t.showlegend for t in fig.data)


def test_show_opens_a_browser_where_no_notebook_renderer_is_active(monkeypatch, tmp_path, classic):
    import webbrowser

    import plotly.io as pio

    fig = plot.compare(classic)
    opened, shown = [], []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    monkeypatch.setattr(type(fig), "show", lambda self, *a, **k: shown.append(self))
    monkeypatch.setattr(pio.renderers, "default", "")
    path = plot.show(fig, tmp_path / "fig.html")
    assert path == tmp_path / "fig.html" and path.stat().st_size > 1_000_000
    assert opened == [path.resolve().as_uri()] and shown == []
    monkeypatch.setattr(pio.renderers, "default", "notebook")
    assert plot.show(fig) is None and shown == [fig]
