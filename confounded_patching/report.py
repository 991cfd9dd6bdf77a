"""One self-contained HTML report of a patching / deconfounding analysis.

:func:`write_report` puts the figures of :mod:`confounded_patching.plot`
(compare, localization, diagnostics, agreement), a summary of every
result, the settings, and a short guide to reading the numbers into one
HTML file. plotly.js is embedded once, so the file opens offline and can
be mailed or archived as is. It is written under a temporary name and
renamed, so a failure never leaves a half-written report.

Example::

    >>> from confounded_patching.report import write_report
    >>> write_report("out/report.html", {"classic": classic, "resample": rs, "mediation": med},
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
from .plot.frames import columns, frame
from .plot.summaries import top_share
from .results import EB_ADJUSTED, EB_UNADJUSTED, RESAMPLE, RESAMPLE_STRATIFIED, atomic_write, is_score

__all__ = ["write_report", "HOW_TO_READ"]

#: The "how to read this" section, as HTML.
HOW_TO_READ = """
<ul>
<li><b>Classic patching</b> runs clean/corrupt prompt pairs and copies one node's value from one run into the
other. Denoising score = (patched − corrupt) / (clean − corrupt): 1 = that node alone restores the clean metric,
0 = no effect, negative = it moves the metric the other way. Noising score = (patched − clean) / (clean − corrupt):
0 = unharmed, −1 = the effect is destroyed.</li>
<li><b>Resample AIE</b> (brute force): for random ordered pairs of prompts (i, j), run prompt i with the node set
to its value under prompt j; the AIE is the mean of y(i with n←n(j)) − y(i), in units of the outcome y. It is
the causal quantity the EB estimator targets, computed on a sample of nodes because it costs a forward pass per
pair and node.</li>
<li><b>EB-AIE</b> estimates the same average indirect effect for every node from one forward pass per prompt, by
reweighting prompt pairs with entropy-balancing weights (Fotouhi et al. 2024, Eq. 2). <i>Adjusted</i> balances
the confounder (the prompts' topics), <i>unadjusted</i> does not; where they differ, the topic explains part of
the node's apparent effect.</li>
<li><b>What an AIE measures.</b> Averaged over random pairs of prompts, the AIE is exactly zero for any outcome
that is additive in the query and the node (y = h₁(q) + h₂(n) + h₃(x), however nonlinear each h): it measures
the <i>q × n non-additivity</i>, how much the node's contribution depends on which prompt it is combined with.
For a binary label of a rare behaviour it is large for nodes that carry the behaviour.</li>
<li><b>Why the weights matter.</b> With uniform weights the balancing term of every EB-AIE is exactly 0: its
signal lives in the weights' cross-evaluations; an outcome-model term (a ridge regression of the outcome on the
balance features) adds back what approximate balance leaves out. A large balancing tolerance γ shrinks every
node toward 0; a small one lets the ratios explode. Read the estimates together with the diagnostics: effective
sample size (ESS), imbalance, the chosen γ and the solver status. NaN means the balancing problem was infeasible for that node.</li>
<li><b>Colours.</b> RdBu, blue = positive, centred at 0 (white). Within a row of the heatmaps, columns with the
same units share one colour range (patching scores with each other; AIEs in units of y with each other); each
colourbar states its normalization. Layer 0 is at the top. Grey cells were not computed.</li>
<li><b>Localization</b> is the share of the total |effect| held by the top 10% of nodes; Fotouhi et al. found
effects less localized after adjustment.</li>
</ul>
"""

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1500px;color:#222;
 padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:0.9em} .notes{background:#f6f6f6;padding:8px 12px;border-left:3px solid #999}
table{border-collapse:collapse;font-size:0.88em;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
 text-align:left;vertical-align:top} th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.figure{margin:12px 0;overflow-x:auto} .grid{display:flex;flex-wrap:wrap;gap:12px}
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


def _table(header, rows) -> str:
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
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """A table cell that is already HTML."""


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": False})


def _summary_rows(results: dict) -> list:
    rows = []
    for name, result in results.items():
        for col in columns((result,)):
            df = col.df
            v = df["value"].to_numpy(float)
            finite = np.isfinite(v)
            order = np.argsort(-np.abs(np.where(finite, v, 0)))[:5]
            top = ", ".join(f"{df['node'].iloc[i]} ({_num(v[i])})" for i in order if finite[i])
            units = f"score, {col.normalization}" if col.is_score else f"units of y = {col.metric or 'y'}"
            extra = ""
            if "status" in df.columns:
                counts = df["status"].astype(str).value_counts()
                extra = ", ".join(f"{c} {s}" for s, c in counts.items())
            rows.append([name, col.title, units, int(len(df)), int(finite.sum()),
                         float(np.nanmean(np.abs(v))) if finite.any() else float("nan"),
                         top_share(v), top, extra])
    return rows


def _settings_rows(results: dict, settings: dict | None) -> list:
    rows = [[k, _fmt_setting(v)] for k, v in (settings or {}).items()]
    for name, result in results.items():
        own = getattr(result, "settings", None)  # e.g. MediationResult.settings
        if isinstance(own, dict):
            rows += [[f"{name}.{k}", _fmt_setting(v)] for k, v in own.items()]
        for attr in ("direction", "method", "metric", "outcome", "outcome_name", "query", "stratified"):
            v = getattr(result, attr, None)
            if isinstance(v, (str, bool, int, float)):
                rows.append([f"{name}.{attr}", _fmt_setting(v)])
        for attr in ("raw", "effects"):
            v = getattr(result, attr, None)
            if getattr(v, "ndim", 0) == 2:
                rows.append([f"{name}.n_pairs", int(v.shape[0])])
                break
    return rows


def _fmt_setting(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={w}" for k, w in v.items())
    return str(v)


def _agreement_pairs(cols) -> list:
    """Pairs of columns worth a scatter: every method against the adjusted EB-AIE (or the unadjusted one when
    there is no adjusted), classic patching against the resample AIE, else the first two columns."""
    by_method = {c.method: c for c in cols}
    target = by_method.get(EB_ADJUSTED) or by_method.get(EB_UNADJUSTED)
    pairs = []
    if target is not None:
        for c in cols:
            if c is not target:
                pairs.append((c, target))
    if target is None or RESAMPLE in by_method:
        ref = by_method.get(RESAMPLE) or by_method.get(RESAMPLE_STRATIFIED)
        for c in cols:
            if ref is not None and c is not ref and is_score(c.method):
                pairs.append((c, ref))
    if target is None and not pairs and len(cols) >= 2:
        pairs.append((cols[0], cols[1]))
    return pairs


def write_report(path: str | os.PathLike, results: dict, *, title: str = "confounded_patching report",
                 notes: str | None = None, settings: dict | None = None) -> Path:
    """Write one self-contained offline HTML report of ``results``.

    Args:
        path: the ``.html`` file to write (parent folders are created).
        results: ``name -> result`` (``PatchingResult``, ``ResampleResult``,
            ``MediationResult`` or a ``to_dataframe()`` table), in the order
            the heatmap columns should appear.
        title: the report's heading.
        notes: free text shown under the heading (plain text; blank lines
            separate paragraphs).
        settings: key/value pairs for the settings table (e.g. the command
            line's options).

    Sections: summary table; settings; how to read this; per-node heatmaps
    (:func:`~.plot.compare`); localization (when an AIE is present);
    weight diagnostics (for results with ESS/imbalance/γ); agreement
    scatters between methods.

    Returns:
        The path written.
    """
    if not isinstance(results, dict) or not results:
        raise InputError(f"results must be a non-empty dict name -> result; received {describe(results)}")
    path = Path(path)
    cols = columns(tuple(results.values()))
    figures: list[tuple[str, str, str]] = []  # (section title, description, html)
    skipped: list[str] = []

    def add(section, description, build, div_id):
        try:
            fig = build()
        except InputError as err:
            skipped.append(f"{section}: {err}")
            return
        figures.append((section, description, _figure_html(fig, div_id)))

    n_units = len({c.units for c in cols})
    col_px = int(max(170, min(300, (1400 - 130 - 120 * n_units) / max(1, len(cols)))))
    add("Per-node effects", "One column per method, one row per node family; hover a cell for its interval and "
        "diagnostics.", lambda: compare(*results.values(), width_per_column=col_px), "cp-compare")
    aie_cols = [c for c in cols if not c.is_score]
    if aie_cols:
        add("Localization", "How concentrated the effects are across nodes (Fotouhi et al., Figure 2).",
            lambda: localization(*[r for r in results.values() if any(not c.is_score for c in columns((r,)))]),
            "cp-localization")
    for name, result in results.items():
        df_cols = frame(result).columns
        if any(k in df_cols for k in ("ess", "imbalance", "gamma")):
            add(f"Weight diagnostics: {name}", "Effective sample size, imbalance and γ per node; marker colour = "
                "solver status.", lambda r=result: diagnostics(r), f"cp-diagnostics-{len(figures)}")
    scatters = []
    for a, b in _agreement_pairs(cols):
        try:
            fig = agreement(a.df, b.df)
        except InputError as err:
            skipped.append(f"agreement {a.title} vs {b.title}: {err}")
            continue
        fig.update_layout(width=560, height=480)
        meta = fig.layout.meta
        fig.update_layout(title=dict(text=f"{b.title} vs {a.title}<br><sup>Spearman ρ = {meta['spearman']:.2f}, "
                                          f"Pearson r = {meta['pearson']:.2f}, {meta['n']} nodes</sup>",
                                     font=dict(size=13)))
        scatters.append(_figure_html(fig, f"cp-agreement-{len(scatters)}"))

    from plotly.offline import get_plotlyjs  # here, not at the top: importing the report never loads plotly

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>",
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>',
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">confounded_patching {__version__} · written {now}</p>',
    ]
    if notes:
        paras = [p.strip() for p in str(notes).split("\n\n") if p.strip()]
        parts.append('<div class="notes">' + "".join(f"<p>{_esc(p)}</p>" for p in paras) + "</div>")
    parts.append("<h2>Summary</h2>")
    parts.append(_table(["result", "method", "units", "nodes", "finite", "mean |value|", "top-10% share",
                         "largest |value| (top 5)", "status"], _summary_rows(results)))
    settings_rows = _settings_rows(results, settings)
    if settings_rows:
        parts.append("<h2>Settings</h2>")
        parts.append(_table(["setting", "value"], settings_rows))
    parts.append("<h2>How to read this</h2>")
    parts.append(HOW_TO_READ)
    for section, description, fig_html in figures:
        parts.append(f"<h2>{_esc(section)}</h2><p>{_esc(description)}</p>")
        parts.append(f'<div class="figure">{fig_html}</div>')
    if scatters:
        parts.append("<h2>Agreement between methods</h2><p>Node scores of two methods against each other "
                     "(nodes matched by label; bars are intervals where available).</p>")
        parts.append('<div class="grid">' + "".join(f'<div class="figure">{s}</div>' for s in scatters) + "</div>")
    if skipped:
        parts.append("<h2>Not shown</h2><ul>" + "".join(f'<li class="skipped">{_esc(s)}</li>' for s in skipped)
                     + "</ul>")
    parts.append("</body></html>")
    text = "\n".join(parts)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
