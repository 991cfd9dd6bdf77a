"""Heatmaps of per-node effects side by side: :func:`compare`.

One column per method, one row per node family (residual stream: layer ×
position; attention heads: layer × head, one row per head position; MLPs: a
layer strip), with the field's conventions: layer 0 at the top, ``RdBu``
centred at 0, the sign and normalization in the colourbar title. Colour
ranges are shared within a row among the columns that have the same units.
Column headers say what each method is (interventional or observational),
how it was computed, and how far it agrees with the exact AIE of the run;
cells whose value is an exact resample AIE are outlined; cells not computed,
cells without a value (infeasible, not identifiable) and unreliable values
each have their own mark and legend entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, describe
from .frames import (FAMILY_TITLES, Column, colorbar_title, columns, hover_text, plotly_modules, pos_label,
                     pos_sort_key, split_confirmation)
from .summaries import assess

__all__ = ["compare"]

MISSING = "#cfcfcf"  # background: cells that were not computed
NOT_IDENTIFIED = "#3b3b3b"  # cells computed without a value: infeasible balance, not identifiable (a white ×)
NOT_IDENTIFIED_LABEL = "not identifiable / infeasible balance"
MISSING_LABEL = "not computed"
EXACT_LABEL = "exact resample AIE (outlined)"
UNRELIABLE_LABEL = "unreliable estimate (dot; reason on hover)"
VERDICT_COLORS = {"exact": "#1a7f37", "trust": "#1a7f37", "caution": "#b35900", "do not trust": "#c62828",
                  "not checked": "#666666"}


@dataclass
class _Row:
    family: str
    head_pos: object = None  # the position of a head row
    xs: list = field(default_factory=list)  # x keys: positions or heads
    layers: list = field(default_factory=list)

    @property
    def title(self) -> str:
        if self.family == "head":
            where = "all positions" if self.head_pos is None else f"pos {self.head_pos}"
            return f"Attention heads @ {where}"
        return FAMILY_TITLES[self.family]

    def select(self, df):
        sub = df[df["kind"] == self.family]
        if self.family == "head":
            sub = sub[[p == self.head_pos for p in sub["pos"]]]
        return sub


def _rows(cols: list[Column]) -> list[_Row]:
    import pandas as pd

    all_df = pd.concat([c.df for c in cols], ignore_index=True)
    rows = []
    for family in ("resid", "head", "mlp"):
        fam = all_df[all_df["kind"] == family]
        if fam.empty:
            continue
        layers = list(range(min(fam["layer"]), max(fam["layer"]) + 1))
        if family == "head":
            for pos in sorted(set(fam["pos"]), key=pos_sort_key):
                sub = fam[[p == pos for p in fam["pos"]]]
                heads = [h for h in sub["head"] if h is not None]
                rows.append(_Row("head", pos, list(range(max(heads) + 1)) if heads else [0], layers))
        else:
            rows.append(_Row(family, None, sorted(set(fam["pos"]), key=pos_sort_key), layers))
    return rows


def _grid(row: _Row, col: Column):
    """Arrays ``[layers, xs]`` of one panel: z, hover text, and the masks ``none`` (computed without a value:
    infeasible balance, not identifiable), ``exact`` (an exact resample AIE in a mixed column) and
    ``unreliable`` (a value its estimator flags unreliable). ``z`` is NaN where there is no value."""
    z = np.full((len(row.layers), len(row.xs)), np.nan)
    none, exact, unreliable = (np.zeros(z.shape, dtype=bool) for _ in range(3))
    text = [[MISSING_LABEL for _ in row.xs] for _ in row.layers]
    sub = row.select(col.df)
    xi = {x: i for i, x in enumerate(row.xs)}
    for rec in sub.to_dict("records"):
        key = rec["head"] if row.family == "head" else rec["pos"]
        if key not in xi:
            continue
        i, j = rec["layer"] - row.layers[0], xi[key]
        z[i, j] = rec["value"]
        finite = math.isfinite(rec["value"])
        none[i, j] = not finite
        exact[i, j] = rec["node"] in col.exact
        unreliable[i, j] = finite and "reliable" in rec and rec["reliable"] is not None and not bool(rec["reliable"])
        text[i][j] = hover_text(rec, col.title)
    return z, text, {"none": none, "exact": exact, "unreliable": unreliable}


def _check_zmax(zmax) -> None:
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)
    if zmax is None or ok(zmax):
        return
    if isinstance(zmax, dict) and set(zmax) <= {"score", "aie"} and all(ok(v) for v in zmax.values()):
        return
    raise InputError(f"zmax must be None, a positive number, or a dict with keys 'score' and/or 'aie' and positive "
                     f"values; received {describe(zmax)}")


def _wrap(parts, width: int) -> list[str]:
    """Join ``parts`` with " · " into lines of at most ``width`` characters (a longer part gets its own line)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return lines


def _stats(a: dict) -> str:
    r = "r" if a.get("signed", True) else "r of |v|"
    return f"ρ|v| {a['spearman_abs']:.2f} · {r} {a['pearson']:.2f} · {a['n']} nodes"


def header(col: Column, width: int = 300) -> str:
    """The column's title block: name, what kind of estimate, how computed, agreement with the exact AIE."""
    chars = max(20, int(width / 6.2))  # 10.5 px text
    small = _wrap([p for t in (col.subtitle, col.how) if t for p in t.split(" · ")], chars)
    out = [f"<b>{col.title}</b>"] + [f"<span style='font-size:10.5px'>{t}</span>" for t in small]
    a = col.agreement
    if a:
        color = VERDICT_COLORS.get(a.get("verdict"), "#666666")
        if a.get("role") in ("confirmed", "compared") and a.get("verdict") not in ("exact", "not checked"):
            label = "confirmed exactly" if a["role"] == "confirmed" else "vs exact AIE"
            out.append(f"<span style='font-size:11px;color:{color}'><b>{label}: {a['verdict']}</b></span>")
            out.append(f"<span style='font-size:10.5px;color:{color}'>{_stats(a)}</span>")
        else:
            out.append(f"<span style='font-size:11px;color:{color}'><b>{a['short']}</b></span>")
    return "<br>".join(out)


def compare(*results, confirmation=None, titles=None, zmax=None, height_per_row: int | None = None,
            width_per_column: int = 300):
    """Heatmaps of per-node scores, one column per method and one row per node family.

    Args:
        *results: ``PatchingResult``, ``ResampleResult``, ``MediationResult``
            (two columns: EB-AIE adjusted, then unadjusted) or their
            ``to_dataframe()`` tables, in the column order wanted; the study's
            order is ``compare(classic, aie, eb, confirmation=check)``. A
            ``Confirmation`` (``cp.confirm``) may be among them instead of
            ``confirmation=``.
        confirmation: the ``Confirmation`` of the resample AIE among
            ``results``: its exact values replace the first-order ones at the
            confirmed nodes (outlined), and every column's header states its
            agreement with the exact AIE.
        titles: one title per column, or a dict ``method -> title``
            (methods: ``"patch:exact"``, ``"resample:stratified:auto"``, ``"eb:adjusted"`` ...).
        zmax: colour range half-width: a number for every row and column, or a
            dict ``{"score": 1.0, "aie": 0.5}`` by unit kind; default: the
            largest |value| of the row's columns with those units.
        height_per_row, width_per_column: panel size in pixels.

    Layout (the field's conventions, after TransformerLens and nnsight demos):

    - columns: a header per column says what it is — classic patching
      (normalized score of clean/corrupt pairs), the resample AIE
      (interventional, topic-stratified or not, which node kinds were
      computed to first order and which exactly, how many nodes were
      confirmed), the EB-AIE (observational, the paper's estimator, adjusted
      or unadjusted) — and, where the run has exact resample values, how far
      the column agrees with them (Spearman of |value|, Pearson, nodes,
      verdict: :func:`~.summaries.assess`);
    - rows: residual stream (x = position, ``tok_i`` labels from the
      prompts when a result carries ``tokens``, else ``pos -1``); attention
      heads (x = head), **one row per head position** when heads were
      scored at several positions; MLPs (x = position: a single-column
      layer strip when scored at one position);
    - y = layer, layer 0 at the top (``autorange="reversed"``); y axes shared
      across a row, x axes shared across a row;
    - colour ``RdBu`` (blue = positive), symmetric about 0. **Colour ranges
      are shared within a row among columns of the same units**: classic and
      attribution patching scores are normalized (unitless, 1 = clean
      recovered) and share one range; resample AIE and EB-AIE are in units
      of the outcome y and share another when their outcome metric is the
      same. Each (row, units) pair has its own colourbar, whose title states
      the normalization and what the sign means.
    - marks, each with a legend entry: grey = not computed (e.g. a resample
      AIE on a sample of nodes); dark with a white × = computed without a
      value (infeasible balance, not identifiable: the hover says why);
      outlined = an exact resample AIE in a column that is partly first
      order; a small dot = a value its estimator flags unreliable.
    - hover: node, value, interval and diagnostics (ESS, γ, imbalance,
      status, winsorized share, how it was computed, why it is unreliable).

    Returns:
        ``plotly.graph_objects.Figure``; ``fig.layout.meta["agreement"]`` maps each column title to its
        :func:`~.summaries.assess` dict.

    Example::

        >>> fig = compare(classic, aie, med, confirmation=check)   # 4 columns
        >>> fig.layout.yaxis.autorange
        'reversed'
    """
    go, make_subplots = plotly_modules()
    _check_zmax(zmax)
    results, confirmation = split_confirmation(results, confirmation)
    cols = assess(columns(results, titles, confirmation), confirmation)
    rows = _rows(cols)
    if not rows:
        raise InputError("the results hold no nodes of kind 'resid', 'head' or 'mlp'")
    n_rows, n_cols = len(rows), len(cols)
    unit_groups = list(dict.fromkeys(c.units for c in cols))
    if height_per_row is None:
        height_per_row = int(min(480, max(260, 14 * max(len(r.layers) for r in rows) + 60)))
    plot_width = width_per_column * n_cols
    plot_height = height_per_row * n_rows
    fig = make_subplots(rows=n_rows, cols=n_cols, shared_yaxes=True, column_titles=[header(c, width_per_column) for c in cols],
                        horizontal_spacing=min(0.2 / n_cols, 28 / plot_width) if n_cols > 1 else 0.0,
                        vertical_spacing=min(0.3 / n_rows, 80 / plot_height) if n_rows > 1 else 0.0)
    for ann in fig.layout.annotations:
        ann.update(font=dict(size=13))
    cb_step = 120 / plot_width  # paper units between colourbars of different units
    axis_k = 1
    ranges = {}
    marks = {"none": False, "exact": False, "unreliable": False}
    outlines = []  # the exact cells' outlines (rectangles)
    for r, row in enumerate(rows, start=1):
        grids = [_grid(row, col) for col in cols]
        for units in unit_groups:
            vals = [np.abs(grids[c][0]) for c, col in enumerate(cols) if col.units == units]
            finite = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([])
            a = float(finite.max()) if finite.size else 0.0
            if isinstance(zmax, dict) and units[0] in zmax:
                a = float(zmax[units[0]])
            elif isinstance(zmax, (int, float)) and not isinstance(zmax, bool):
                a = float(zmax)
            a = a if a > 0 and math.isfinite(a) else 1.0
            ranges[(r, units)] = (axis_k, a, bool(finite.size))
            axis_k += 1
        for c, col in enumerate(cols, start=1):
            z, text, masks = grids[c - 1]
            k = ranges[(r, col.units)][0]
            xs = list(range(len(row.xs)))
            fig.add_trace(go.Heatmap(z=z, x=xs, y=row.layers, text=text,
                                     hovertemplate="%{text}<extra></extra>", coloraxis=f"coloraxis{k}",
                                     xgap=1, ygap=1, name=f"{col.title} · {row.title}"), row=r, col=c)
            none = masks["none"]
            if none.any():  # its own layer, so a panel with no value at all still draws
                fig.add_trace(go.Heatmap(z=np.where(none, 1.0, np.nan), x=xs, y=row.layers, text=text,
                                         hovertemplate="%{text}<extra></extra>", zmin=0, zmax=1, showscale=False,
                                         colorscale=[[0, NOT_IDENTIFIED], [1, NOT_IDENTIFIED]], xgap=1, ygap=1,
                                         name=f"{NOT_IDENTIFIED_LABEL} · {col.title} · {row.title}"), row=r, col=c)
                _points(fig, go, none, row, r, c, NOT_IDENTIFIED_LABEL,
                        dict(symbol="x-thin", size=7, line=dict(color="white", width=1.5)))
                marks["none"] = True
            if masks["unreliable"].any():
                _points(fig, go, masks["unreliable"], row, r, c, UNRELIABLE_LABEL,
                        dict(symbol="circle", size=4, color="#222222"))
                marks["unreliable"] = True
            if masks["exact"].any():
                sp = fig.get_subplot(r, c)
                xref, yref = sp.xaxis.plotly_name.replace("axis", ""), sp.yaxis.plotly_name.replace("axis", "")
                for i, j in zip(*np.nonzero(masks["exact"])):
                    layer = row.layers[i]
                    outlines.append(dict(type="rect", xref=xref, yref=yref, x0=j - 0.47, x1=j + 0.47,
                                         y0=layer - 0.47, y1=layer + 0.47, line=dict(color="#111111", width=1.6),
                                         fillcolor="rgba(0,0,0,0)", layer="above"))
                marks["exact"] = True
    # all at once: plotly's add_shape re-validates every earlier shape, quadratic in their number
    fig.update_layout(shapes=list(fig.layout.shapes) + outlines)
    # colour axes and colourbars, one per (row, units) present in that row
    for (r, units), (k, a, any_value) in ranges.items():
        g = unit_groups.index(units)
        col = next(c for c in cols if c.units == units)
        ax = fig.get_subplot(r, 1).yaxis
        y0, y1 = ax.domain
        fig.layout[f"coloraxis{k}"] = dict(
            colorscale="RdBu", cmin=-a, cmax=a, showscale=any_value,  # no colourbar for all-grey panels
            colorbar=dict(x=1.0 + 0.02 + g * cb_step, xanchor="left", y=(y0 + y1) / 2, yanchor="middle",
                          len=(y1 - y0), thickness=12,
                          title=dict(text=colorbar_title(col), side="right", font=dict(size=10))))
    # axes: layer 0 at the top, shared across each row; tick labels
    for r, row in enumerate(rows, start=1):
        first = fig.get_subplot(r, 1)
        first_x = first.xaxis.plotly_name.replace("axis", "")
        tokens = max((c.tokens for c in cols), key=len)
        for c in range(1, n_cols + 1):
            sp = fig.get_subplot(r, c)
            if row.family == "head":
                ticktext = [str(h) for h in row.xs]
                xtitle = "head"
            else:
                ticktext = [pos_label(p, tokens) for p in row.xs]
                xtitle = "position"
            sp.xaxis.update(tickmode="array", tickvals=list(range(len(row.xs))), ticktext=ticktext,
                            title=dict(text=xtitle, font=dict(size=11)), showgrid=False, zeroline=False,
                            range=[-0.5, len(row.xs) - 0.5])
            if c > 1:
                sp.xaxis.update(matches=first_x)
            sp.yaxis.update(autorange="reversed", showgrid=False, zeroline=False, tickmode="linear", tick0=0,
                            dtick=1 if len(row.layers) <= 16 else 5)
        first.yaxis.update(title=dict(text=f"{row.title}<br>layer", font=dict(size=12)))
    # legend: what the marks mean
    legend = [(MISSING_LABEL, dict(symbol="square", size=13, color=MISSING, line=dict(color="#999", width=1))),
              (NOT_IDENTIFIED_LABEL, dict(symbol="square-x", size=13, color=NOT_IDENTIFIED,
                                          line=dict(color="white", width=1.2))) if marks["none"] else None,
              (EXACT_LABEL, dict(symbol="square-open", size=13, color="#111111", line=dict(width=2)))
              if marks["exact"] else None,
              (UNRELIABLE_LABEL, dict(symbol="circle", size=5, color="#222222")) if marks["unreliable"] else None]
    for name, marker in filter(None, legend):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, showlegend=True, marker=marker,
                                 hoverinfo="skip"), row=1, col=1)
    metrics = sorted({c.metric for c in cols if c.metric})
    subtitle = ("colour range shared within a row among columns with the same units"
                + (f" · outcome: {', '.join(metrics)}" if metrics else ""))
    n_lines = max(h.count("<br>") + 1 for h in (header(c, width_per_column) for c in cols))
    top = 72 + 15 * n_lines
    fig.update_layout(
        title=dict(text="Per-node effects", subtitle=dict(text=subtitle, font=dict(size=12)), x=0.01,
                   y=1, yref="container", yanchor="top", pad=dict(t=12)),
        height=plot_height + top + 95,
        width=plot_width + 130 + 120 * len(unit_groups),
        margin=dict(l=90, r=40 + 120 * len(unit_groups), t=top, b=95),
        plot_bgcolor=MISSING, paper_bgcolor="white", template="plotly_white",
        legend=dict(orientation="h", x=0, xanchor="left", yref="container", y=0, yanchor="bottom",
                    font=dict(size=11)),
        meta={"agreement": {c.title: c.agreement for c in cols}},
    )
    return fig


def _points(fig, go, mask, row: _Row, r: int, c: int, name: str, marker: dict) -> None:
    ii, jj = np.nonzero(mask)
    fig.add_trace(go.Scatter(x=jj.tolist(), y=[row.layers[i] for i in ii], mode="markers", marker=marker,
                             hoverinfo="skip", showlegend=False, name=name), row=r, col=c)
