"""One self-contained HTML report of a patching / deconfounding analysis, in the order a researcher reads it.

:func:`write_report` writes, into one HTML file:

1. the title and a short note;
2. the **headline**: per method, what it is, its top nodes, and this run's
   agreement with the exact (interventional) AIE, with a one-line verdict
   (trust / caution / do not trust, :func:`~.plot.summaries.assess`); the
   exact confirmation of the fast AIE (``cp.confirm``); and the caveat that
   the EB-AIE is observational and not identified on a real model;
3. the heatmaps (:func:`~.plot.compare`: classic patching | resample AIE |
   EB-AIE adjusted | EB-AIE unadjusted), each method's values against the
   exact AIE, and how localized the effects are;
4. the EB-AIE's diagnostics, grouped by layer with the thresholds of the
   ``reliable`` flag drawn, and why nodes are unreliable;
5. how to read the numbers and the settings, collapsed.

plotly.js is embedded once, so the file opens offline and can be mailed or
archived as is; the page fits a 1,280 px window. It is written under a
temporary name and renamed, so a failure never leaves a half-written report.

Example::

    >>> from confounded_patching.report import write_report
    >>> write_report("out/report.html", {"patch": classic, "resample": aie, "confirm": check, "mediation": med},
    ...              title="Gender bias in SmolLM2", notes="300 prompts, seed 0")
"""

from __future__ import annotations

import datetime as _dt
import html
import os
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, describe
from .plot import agreement, compare, diagnostics, localization
from .plot.frames import METHOD_ORDER, columns, frame, split_confirmation
from .plot.heatmaps import VERDICT_COLORS
from .plot.summaries import assess, exact_reference
from .results import atomic_write

__all__ = ["write_report", "HOW_TO_READ", "EB_CAVEAT", "WIDTH"]

#: The widest figure, in pixels: the page fits a 1,280 px window with its scrollbar.
WIDTH = 1210

#: The caveat about the EB-AIE, shown in the headline whenever an EB-AIE is in the report.
EB_CAVEAT = ("The EB-AIE is observational (the paper's estimator): a node's activation is a deterministic function "
             "of the prompt, so on a real model its effect is not identified from observation — the estimate rests "
             "on the weight model's extrapolation, and on SmolLM2 it did not track the interventional AIE "
             "(docs/evidence.md). Read the resample AIE first; use the EB-AIE where no intervention is possible.")

#: The "how to read this" section, as HTML.
HOW_TO_READ = """
<ul>
<li><b>Classic patching</b> runs clean/corrupt prompt pairs and copies one node's value from one run into the
other. Denoising score = (patched − corrupt) / (clean − corrupt): 1 = that node alone restores the clean metric,
0 = no effect, negative = it moves the metric the other way. Noising score = (patched − clean) / (clean − corrupt):
0 = unharmed, −1 = the effect is destroyed.</li>
<li><b>Resample AIE</b> (interventional): for random ordered pairs of prompts (i, j), run prompt i with the node set
to its value under prompt j; the AIE is the mean of y(i with n←n(j)) − y(i), in units of the outcome y.
<i>Topic-stratified</i>: j is drawn from i's topic (deconfounded). It is exactly the quantity the paper's Eq. (1)
defines, computed by intervention. <i>First order</i> replaces each swap by ∇y(i)·(n(j) − n(i)) (one forward and
one backward pass per prompt for every node); <i>exact</i> runs the swap. Outlined cells are exact; the
confirmation reruns the fast AIE's top nodes and a random sample of the rest exactly and reports the agreement.</li>
<li><b>EB-AIE</b> estimates the same average indirect effect for every node from observation alone, by
reweighting prompt pairs with entropy-balancing weights (Fotouhi et al. 2024, Eq. 2). <i>Adjusted</i> balances
the confounder (the prompts' topics), <i>unadjusted</i> does not. Each value carries a <i>reliable</i> flag (see the
diagnostics).</li>
<li><b>Verdicts.</b> Each method is compared with the exact resample AIE on the nodes where the run computed it:
Spearman correlation of |value| (do they agree on which nodes matter), Pearson correlation (of |value| for a
patching score, whose units and sign differ) and the overlap of the top nodes. <i>trust</i>: Spearman of |value|
and Pearson both at least 0.9 on at least 10 nodes; <i>caution</i>: both at least 0.7;
otherwise <i>do not trust</i>.</li>
<li><b>What an AIE measures.</b> Averaged over random pairs of prompts, the AIE is exactly zero for any outcome
that is additive in the query and the node (y = h₁(q) + h₂(n) + h₃(x), however nonlinear each h): it measures
the <i>q × n non-additivity</i>, how much the node's contribution depends on which prompt it is combined with.
For a binary label of a rare behaviour it is large for nodes that carry the behaviour.</li>
<li><b>Why the weights matter.</b> With uniform weights the balancing term of every EB-AIE is exactly 0: its
signal lives in the weights' cross-evaluations; an outcome-model term (a ridge regression of the outcome on the
balance features) adds back what approximate balance leaves out. A large balancing tolerance γ shrinks every
node toward 0; a small one lets the ratios explode. Read the estimates together with the diagnostics.</li>
<li><b>Colours and marks.</b> RdBu, blue = positive, centred at 0 (white). Within a row of the heatmaps, columns
with the same units share one colour range (patching scores with each other; AIEs in units of y with each other);
each colourbar states its normalization. Layer 0 is at the top. Grey = not computed; dark with a white × =
computed without a value (infeasible balance, not identifiable); outlined = an exact resample AIE; a small dot =
a value its estimator flags unreliable. Hover a cell for its interval, diagnostics and reason.</li>
<li><b>Localization</b> is the share of the total |effect| held by the top 10% of nodes; Fotouhi et al. found
effects less localized after adjustment.</li>
</ul>
"""

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:20px auto;max-width:1240px;color:#222;
 padding:0 12px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:0.9em} .notes{background:#f6f6f6;padding:6px 12px;border-left:3px solid #999}
table{border-collapse:collapse;font-size:0.88em;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;
 text-align:left;vertical-align:top} th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.headline{width:100%;table-layout:fixed} table.headline td{overflow-wrap:anywhere}
.sub{color:#555;font-size:0.92em} .nodes{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:0.92em}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;color:white;font-weight:bold;font-size:0.95em}
.caveat{background:#fff4e5;border-left:4px solid #b35900;padding:8px 12px;margin:10px 0}
.confirm{background:#eef6ee;border-left:4px solid #1a7f37;padding:8px 12px;margin:10px 0}
.figure{margin:12px 0;max-width:100%;overflow:hidden} .grid{display:flex;flex-wrap:wrap;gap:12px}
details{margin:12px 0} summary{cursor:pointer;font-weight:bold;font-size:1.1em;padding:4px 0}
.skipped{color:#a33;font-size:0.9em}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    if f != f:
        return "nan"
    if f.is_integer() and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.4g}"


class _Raw(str):
    """A table cell that is already HTML."""


def _table(header, rows, cls: str = "", widths=None) -> str:
    cols = "".join(f'<col style="width:{w}">' for w in widths) if widths else ""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{_num(v)}</td>')
            else:
                cells.append(f"<td>{v if isinstance(v, _Raw) else _esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    klass = f' class="{cls}"' if cls else ""
    return (f"<table{klass}><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": False})


def _badge(verdict: str) -> str:
    return f'<span class="verdict" style="background:{VERDICT_COLORS.get(verdict, "#666")}">{_esc(verdict)}</span>'


def _top_nodes(col, k: int = 5) -> _Raw:
    """The ``k`` nodes with the largest |value| (reliable ones only where the estimator flags reliability)."""
    df = col.df
    v = df["value"].to_numpy(float)
    ok = np.isfinite(v)
    note = ""
    if "reliable" in df.columns:
        rel = df["reliable"].astype(bool).to_numpy()
        note = f"{int((ok & rel).sum())} of {len(df)} reliable"
        ok &= rel
        if not ok.any():
            return _Raw(f'<span class="sub">no reliable node ({note})</span>')
    if not ok.any():
        return _Raw('<span class="sub">no finite value</span>')
    order = [i for i in np.argsort(-np.abs(np.where(ok, v, 0)), kind="stable") if ok[i]][:k]
    exact = col.exact
    items = [f"{_esc(df['node'].iloc[i])} {_num(v[i])}" + (" ▢" if df["node"].iloc[i] in exact else "")
             for i in order]
    tail = f'<br><span class="sub">{note}</span>' if note else ""
    return _Raw('<span class="nodes">' + "<br>".join(items) + "</span>" + tail)


def _agreement_cell(a: dict) -> _Raw:
    if not a or a.get("role") == "reference":
        return _Raw('<span class="sub">the reference</span>' if a else "–")
    if a.get("verdict") == "not checked" or "spearman_abs" not in a:
        return _Raw('<span class="sub">–</span>')
    r = "Pearson" if a.get("signed", True) else "Pearson of |v|"
    parts = [f"Spearman |v| <b>{a['spearman_abs']:.2f}</b>", f"{r} <b>{a['pearson']:.2f}</b>",
             f"top-{a['top_k']} overlap {a['top_overlap']:.0%}", f"{a['n']} nodes"]
    if a.get("per_pair_spearman") is not None and np.isfinite(a.get("per_pair_spearman", np.nan)):
        parts.insert(3, f"per pair {a['per_pair_spearman']:.2f}")
    return _Raw("<br>".join(parts))


def _headline_rows(cols) -> list:
    rows = []
    for col in cols:
        a = col.agreement or {}
        units = f"score, {col.normalization}" if col.is_score else f"AIE, units of {col.metric or 'y'}"
        what = _Raw(f"<b>{_esc(col.title)}</b><br><span class=\"sub\">{_esc(col.subtitle)}<br>"
                    f"{_esc(col.how)}<br>{_esc(units)}</span>")
        v, line = a.get("verdict", "not checked"), a.get("line", "")
        line = line[len(v) + 2:] if line.startswith(f"{v}: ") else line
        verdict = _Raw(f"{_badge(v)}<br>{_esc(line[:1].upper() + line[1:])}")
        rows.append([what, _top_nodes(col), _agreement_cell(a), verdict])
    return rows


def _detectable_note(cols) -> str:
    """One measured sentence: the EB-AIE's smallest detectable effects against the resample AIE's largest value."""
    eb = [c for c in cols if c.method.startswith("eb:") and "detectable" in c.df.columns]
    det = np.concatenate([c.df["detectable"].to_numpy(dtype=float) for c in eb]) if eb else np.array([])
    det = det[np.isfinite(det)]
    if not det.size:
        return ""
    out = (f" At these nodes no estimator could tell an AIE below {np.median(det):.3g} (median over nodes; "
           f"{det.min():.3g} to {det.max():.3g}) from 0, a floor set by how little of each node the query "
           "leaves free")
    res = [c for c in cols if c.is_resample]
    if res:
        v = np.abs(res[0].df["value"].to_numpy(dtype=float))
        v = v[np.isfinite(v)]
        if v.size:
            out += (f"; the largest |resample AIE| here is {v.max():.3g}, an effect detectable at "
                    f"{int(np.sum(det <= v.max()))} of {det.size} EB-AIE node estimates")
    return out + "."


def _reason_rows(result) -> list:
    df = frame(result)
    if "reason" not in df.columns:
        return []
    methods = list(dict.fromkeys(df["method"]))
    tally: dict = {}
    for method in methods:
        for reason in df[df["method"] == method]["reason"]:
            for part in (reason.split("; ") if isinstance(reason, str) and reason else ()):
                key = part.split(" (")[0]
                tally.setdefault(key, dict.fromkeys(methods, 0))[method] += 1
    rows = [[k] + [tally[k][m] for m in methods] for k in sorted(tally, key=lambda k: -sum(tally[k].values()))]
    if "reliable" in df.columns:
        rows.append([_Raw("<b>reliable</b>")] + [int(df[df["method"] == m]["reliable"].astype(bool).sum())
                                               for m in methods])
    return rows


def _settings_rows(results: dict, settings: dict | None) -> list:
    rows = [[k, _fmt_setting(v)] for k, v in (settings or {}).items()]
    for name, result in results.items():
        own = getattr(result, "settings", None)  # e.g. MediationResult.settings
        if isinstance(own, dict):
            rows += [[f"{name}.{k}", _fmt_setting(v)] for k, v in own.items()]
        for attr in ("direction", "method", "metric", "outcome", "outcome_name", "query", "stratified", "tag",
                     "checked", "seconds"):
            v = getattr(result, attr, None)
            if isinstance(v, (str, bool, int, float)) or (attr == "seconds" and isinstance(v, dict)):
                rows.append([f"{name}.{attr}", _fmt_setting(v)])
        for attr in ("raw", "effects", "exact_effects"):
            v = getattr(result, attr, None)
            if getattr(v, "ndim", 0) == 2:
                rows.append([f"{name}.n_pairs", int(v.shape[0])])
                break
    return rows


def _fmt_setting(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={w:.3g}" if isinstance(w, float) else f"{k}={w}" for k, w in v.items())
    return str(v)


def _order(results: dict) -> dict:
    """The results in the study's order: patching, resample AIE, EB-AIE (a Confirmation anywhere)."""
    def rank(item):
        try:
            methods = list(frame(item[1])["method"])
        except InputError:
            return len(METHOD_ORDER)
        return min((METHOD_ORDER.index(m) for m in methods if m in METHOD_ORDER), default=len(METHOD_ORDER))

    return dict(sorted(results.items(), key=rank))


def _compare_width(cols) -> int:
    """Per-column width so that :func:`compare` is at most :data:`WIDTH` wide."""
    n_units = len({c.units for c in cols})
    return int(max(140, min(300, (WIDTH - 130 - 120 * n_units) / max(1, len(cols)))))


def write_report(path: str | os.PathLike, results: dict, *, title: str = "confounded_patching report",
                 notes: str | None = None, settings: dict | None = None) -> Path:
    """Write one self-contained offline HTML report of ``results``.

    Args:
        path: the ``.html`` file to write (parent folders are created).
        results: ``name -> result``: ``PatchingResult`` (``cp.patch``), ``ResampleResult`` (``cp.resample``),
            ``Confirmation`` (``cp.confirm`` of that resample result), ``MediationResult`` (``cp.mediate``) or
            a ``to_dataframe()`` table; any may be missing. The pipeline uses the names ``"patch"``,
            ``"resample"``, ``"confirm"``, ``"mediation"``; the names only label the settings. Columns are
            shown in the study's order: patching, resample AIE, EB-AIE adjusted, EB-AIE unadjusted.
        title: the report's heading.
        notes: free text shown under the heading (plain text; blank lines
            separate paragraphs).
        settings: key/value pairs for the settings table (e.g. the command
            line's options).

    Sections: headline (per method: what it is, top nodes, agreement with the exact AIE and a verdict; the
    exact confirmation; the EB-AIE caveat), per-node effects (:func:`~.plot.compare`), agreement between
    methods (each against the exact AIE), localization, diagnostics of the EB-AIE (by layer, with the
    reliability thresholds, and the reasons nodes are unreliable), how to read this and settings
    (collapsed), and what could not be shown.

    Returns:
        The path written.
    """
    if not isinstance(results, dict) or not results:
        raise InputError(f"results must be a non-empty dict name -> result; received {describe(results)}")
    path = Path(path)
    results = _order(results)
    plain, confirmation = split_confirmation(tuple(results.values()))
    if not plain:
        raise InputError("results hold only a Confirmation; add the ResampleResult it confirmed (and the other "
                         "results) to report them")
    cols = assess(columns(plain, confirmation=confirmation), confirmation)
    skipped: list[str] = []

    def figure(section, build, div_id):
        try:
            return _figure_html(build(), div_id)
        except InputError as err:
            skipped.append(f"{section}: {err}")
            return None

    parts: list[str] = []
    # 2. the headline
    parts.append('<h2 id="headline">Headline: which nodes matter, and which method to trust</h2>')
    parts.append(_table(["method", "top nodes by |value|", "agreement with the exact AIE (this run)", "verdict"],
                        _headline_rows(cols), cls="headline", widths=("24%", "24%", "20%", "32%")))
    if confirmation is not None:
        seconds = getattr(confirmation, "seconds", 0.0)
        parts.append(f'<p class="confirm"><b>Exact confirmation</b> of the resample AIE '
                     f"({_esc(confirmation.checked)}): {_esc(confirmation.summary())}"
                     + (f" ({seconds:.1f} s)." if seconds else ".") + " Those nodes show their exact value in the "
                     "heatmaps (outlined); ▢ marks exact values in the top-node lists.</p>")
    elif any(c.is_resample and (c.agreement or {}).get("role") == "unchecked" for c in cols):
        parts.append('<p class="caveat">The resample AIE was computed to first order and not confirmed exactly in '
                     "this run (cp.confirm): its agreement with the exact AIE is unknown.</p>")
    if any(c.method.startswith("eb:") for c in cols):
        parts.append(f'<p class="caveat"><b>About the EB-AIE.</b> {_esc(EB_CAVEAT)}{_esc(_detectable_note(cols))}</p>')
    # 3. the figures
    parts.append('<h2 id="effects">Per-node effects</h2><p>One column per method, one row per node family; hover a '
                 "cell for its value, interval, diagnostics and how it was computed. Each header says what the "
                 "column is and how far it agrees with the exact AIE of this run.</p>")
    fig = figure("Per-node effects", lambda: compare(*plain, confirmation=confirmation,
                                                     width_per_column=_compare_width(cols)), "cp-compare")
    if fig:
        parts.append(f'<div class="figure">{fig}</div>')
    ref_col = next((c for c in cols if c.is_resample and (c.agreement or {}).get("role") in ("reference",
                                                                                             "confirmed")), None)
    scatters = []
    if ref_col is not None:
        ref = exact_reference(cols)
        ref_df = ref_col.df[[n in ref for n in ref_col.df["node"]]].copy()
        ref_df["method"] = "resample" if not ref_col.method.startswith("resample:stratified") else \
            "resample:stratified"
        for col in cols:
            if col is ref_col:
                continue
            try:
                sc = agreement(col.df, ref_df)
            except InputError as err:
                skipped.append(f"agreement {col.title} vs the exact AIE: {err}")
                continue
            a = col.agreement or {}
            stats = a.get("short", "").replace("vs exact AIE: ", "")
            sc.update_layout(width=395, height=400, margin=dict(l=60, r=10, t=70, b=50), showlegend=False,
                             title=dict(text=f"{col.title} vs exact AIE<br><span style='font-size:12px'>{stats}"
                                             "</span>", font=dict(size=14)))
            sc.update_xaxes(title=dict(font=dict(size=11)))
            sc.update_yaxes(title=dict(text="exact resample AIE", font=dict(size=11)))
            scatters.append(_figure_html(sc, f"cp-agreement-{len(scatters)}"))
    if scatters:
        parts.append('<h2 id="agreement">Agreement between methods</h2><p>Each method against the exact resample '
                     "AIE, on the nodes where this run computed it (colour = node kind).</p>")
        parts.append('<div class="grid">' + "".join(f'<div class="figure">{s}</div>' for s in scatters) + "</div>")
    aie_results = [r for r in plain if any(not c.is_score for c in columns((r,)))]
    if aie_results:
        fig = figure("Localization", lambda: localization(*aie_results), "cp-localization")
        if fig:
            parts.append('<h2 id="localization">Localization</h2><p>How concentrated the effects are across nodes '
                         "(Fotouhi et al., Figure 2).</p>")
            parts.append(f'<div class="figure">{fig}</div>')
    # 4. diagnostics
    for name, result in results.items():
        if confirmation is result:
            continue
        try:
            df_cols = frame(result).columns
        except InputError:
            continue
        if not any(k in df_cols for k in ("ess", "imbalance", "gamma")):
            continue
        fig = figure(f"Weight diagnostics: {name}", lambda r=result: diagnostics(r), f"cp-diagnostics-{name}")
        if fig is None:
            continue
        parts.append(f'<h2 id="diagnostics-{_esc(name)}">Weight diagnostics: {_esc(name)}</h2>')
        reasons = _reason_rows(result)
        if reasons:
            methods = [c.title for c in columns((result,))]
            parts.append("<p>Why EB-AIE values are not reliable (a node can have several reasons):</p>")
            parts.append(_table(["reason"] + methods, reasons))
        parts.append("<p>Each point is a node, grouped by layer; dashed red lines are the thresholds of the "
                     "<i>reliable</i> flag; colour: reliable, unreliable, or no value.</p>")
        parts.append(f'<div class="figure">{fig}</div>')
    # 5. reference material, collapsed
    parts.append('<details><summary id="how-to-read">How to read this</summary>' + HOW_TO_READ + "</details>")
    settings_rows = _settings_rows(results, settings)
    if settings_rows:
        parts.append('<details><summary id="settings">Settings</summary>'
                     + _table(["setting", "value"], settings_rows) + "</details>")
    if skipped:
        parts.append("<h2>Not shown</h2><ul>" + "".join(f'<li class="skipped">{_esc(s)}</li>' for s in skipped)
                     + "</ul>")

    from plotly.offline import get_plotlyjs  # here, not at the top: importing the report never loads plotly

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>",
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>',
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">confounded_patching {__version__} · written {now}</p>',
    ]
    if notes:
        paras = [p.strip() for p in str(notes).split("\n\n") if p.strip()]
        page.append('<div class="notes">' + "".join(f"<p>{_esc(p)}</p>" for p in paras) + "</div>")
    text = "\n".join(page + parts + ["</body></html>"])
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
