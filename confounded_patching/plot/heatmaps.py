"""Heatmaps of per-node effects side by side: :func:`compare`.

One column per method, one row per node family (residual stream: layer ×
position; attention heads: layer × head, one row per head position; MLPs: a
layer strip), with the field's conventions: layer 0 at the top, ``RdBu``
centred at 0, the sign and normalization in the colourbar title. Colour
ranges are shared within a row among the columns that have the same units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, describe
from .frames import (FAMILY_TITLES, Column, colorbar_title, columns, hover_text, plotly_modules, pos_label,
                     pos_sort_key)

__all__ = ["compare"]

MISSING = "#cfcfcf"  # background: cells that were not computed
NOT_IDENTIFIED = "#3b3b3b"  # cells computed without a value: infeasible balance, not identifiable (a white ×)
NOT_IDENTIFIED_LABEL = "not identifiable / infeasible balance"
MISSING_LABEL = "not computed"


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
    """(z, hover text, no-value mask) arrays ``[layers, xs]`` of one panel.

    ``z`` is NaN where the column has no node (not computed) and where the node was computed without a
    value (infeasible balance, not identifiable: ``mask`` is True there).
    """
    z = np.full((len(row.layers), len(row.xs)), np.nan)
    mask = np.zeros(z.shape, dtype=bool)
    text = [[MISSING_LABEL for _ in row.xs] for _ in row.layers]
    sub = row.select(col.df)
    xi = {x: i for i, x in enumerate(row.xs)}
    for rec in sub.to_dict("records"):
        key = rec["head"] if row.family == "head" else rec["pos"]
        if key not in xi:
            continue
        i, j = rec["layer"] - row.layers[0], xi[key]
        z[i, j] = rec["value"]
        mask[i, j] = not math.isfinite(rec["value"])
        text[i][j] = hover_text(rec, col.title)
    return z, text, mask


def _check_zmax(zmax) -> None:
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)
    if zmax is None or ok(zmax):
        return
    if isinstance(zmax, dict) and set(zmax) <= {"score", "aie"} and all(ok(v) for v in zmax.values()):
        return
    raise InputError(f"zmax must be None, a positive number, or a dict with keys 'score' and/or 'aie' and positive "
                     f"values; received {describe(zmax)}")


def compare(*results, titles=None, zmax=None, height_per_row: int | None = None, width_per_column: int = 300):
    """Heatmaps of per-node scores, one column per method and one row per node family.

    Args:
        *results: ``PatchingResult``, ``ResampleResult``, ``MediationResult``
            (two columns: EB-AIE unadjusted, then adjusted) or their
            ``to_dataframe()`` tables, in the column order wanted.
        titles: one title per column, or a dict ``method -> title``
            (methods: ``"patch:exact"``, ``"resample"``, ``"eb:adjusted"`` ...).
        zmax: colour range half-width: a number for every row and column, or a
            dict ``{"score": 1.0, "aie": 0.5}`` by unit kind; default: the
            largest |value| of the row's columns with those units.
        height_per_row, width_per_column: panel size in pixels.

    Layout (the field's conventions, after TransformerLens and nnsight demos):

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
      the normalization and what the sign means. Grey cells were not
      computed (e.g. resample AIE on a sample of nodes).
    - hover: node, value, interval and diagnostics (ESS, γ, imbalance,
      status, winsorized share).

    Returns:
        ``plotly.graph_objects.Figure``.

    Example::

        >>> fig = compare(classic, resample_result, med)   # 4 columns
        >>> fig.layout.yaxis.autorange
        'reversed'
    """
    go, make_subplots = plotly_modules()
    _check_zmax(zmax)
    cols = columns(results, titles)
    rows = _rows(cols)
    if not rows:
        raise InputError("the results hold no nodes of kind 'resid', 'head' or 'mlp'")
    n_rows, n_cols = len(rows), len(cols)
    unit_groups = list(dict.fromkeys(c.units for c in cols))
    if height_per_row is None:
        height_per_row = int(min(480, max(260, 14 * max(len(r.layers) for r in rows) + 60)))
    plot_width = width_per_column * n_cols
    plot_height = height_per_row * n_rows
    fig = make_subplots(rows=n_rows, cols=n_cols, shared_yaxes=True, column_titles=[c.title for c in cols],
                        horizontal_spacing=min(0.2 / n_cols, 28 / plot_width) if n_cols > 1 else 0.0,
                        vertical_spacing=min(0.3 / n_rows, 80 / plot_height) if n_rows > 1 else 0.0)
    cb_step = 120 / plot_width  # paper units between colourbars of different units
    axis_k = 1
    ranges = {}
    for r, row in enumerate(rows, start=1):
        grids = [_grid(row, col) for col in cols]
        for g, units in enumerate(unit_groups):
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
            z, text, mask = grids[c - 1]
            k = ranges[(r, col.units)][0]
            xs = list(range(len(row.xs)))
            fig.add_trace(go.Heatmap(z=z, x=xs, y=row.layers, text=text,
                                     hovertemplate="%{text}<extra></extra>", coloraxis=f"coloraxis{k}",
                                     xgap=1, ygap=1, name=f"{col.title} · {row.title}"), row=r, col=c)
            if mask.any():  # its own layer, so a panel with no value at all still draws
                fig.add_trace(go.Heatmap(z=np.where(mask, 1.0, np.nan), x=xs, y=row.layers, text=text,
                                         hovertemplate="%{text}<extra></extra>", zmin=0, zmax=1, showscale=False,
                                         colorscale=[[0, NOT_IDENTIFIED], [1, NOT_IDENTIFIED]], xgap=1, ygap=1,
                                         name=f"{NOT_IDENTIFIED_LABEL} · {col.title} · {row.title}"), row=r, col=c)
                ii, jj = np.nonzero(mask)
                fig.add_trace(go.Scatter(x=jj.tolist(), y=[row.layers[i] for i in ii], mode="markers",
                                         marker=dict(symbol="x-thin", size=7, line=dict(color="white", width=1.5)),
                                         hoverinfo="skip", showlegend=False, name=NOT_IDENTIFIED_LABEL),
                              row=r, col=c)
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
    # legend: what the cells without a colour mean
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=MISSING_LABEL, showlegend=True,
                             marker=dict(symbol="square", size=13, color=MISSING, line=dict(color="#999", width=1))),
                  row=1, col=1)
    if any(t.name.startswith(NOT_IDENTIFIED_LABEL) for t in fig.data):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=NOT_IDENTIFIED_LABEL, showlegend=True,
                                 marker=dict(symbol="square-x", size=13, color=NOT_IDENTIFIED,
                                             line=dict(color="white", width=1.2))), row=1, col=1)
    metrics = sorted({c.metric for c in cols if c.metric})
    subtitle = ("colour range shared within a row among columns with the same units"
                + (f" · outcome: {', '.join(metrics)}" if metrics else ""))
    fig.update_layout(
        title=dict(text=f"Per-node effects<br><sup>{subtitle}</sup>", x=0.01),
        height=plot_height + 170,
        width=plot_width + 130 + 120 * len(unit_groups),
        margin=dict(l=90, r=40 + 120 * len(unit_groups), t=110, b=60),
        plot_bgcolor=MISSING, paper_bgcolor="white", template="plotly_white",
        legend=dict(orientation="h", x=1, xanchor="right", yref="container", y=0.995, yanchor="top",
                    font=dict(size=11)),
    )
    return fig
