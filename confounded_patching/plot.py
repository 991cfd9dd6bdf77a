"""Plotly figures of per-node effects: heatmaps side by side, localization, diagnostics, agreement.

Every function takes results (``PatchingResult``, ``ResampleResult``,
``MediationResult``), or their long-form ``to_dataframe()`` tables, and
returns a ``plotly.graph_objects.Figure``. plotly is imported inside the
functions, so ``import confounded_patching`` never loads it.

- :func:`compare` — one column per method, one row per node family
  (residual stream: layer × position; attention heads: layer × head, one
  row per head position; MLPs: a layer strip), the field's conventions
  (layer 0 at the top, ``RdBu`` centred at 0, sign and normalization in
  the colourbar title). Colour ranges are shared within a row among the
  columns that have the same units (see :func:`compare`).
- :func:`localization` — per-node |AIE| sorted by magnitude, unadjusted
  versus adjusted, and the share of the total |AIE| held by the top 10% of
  nodes (Fotouhi et al. 2024, Figure 2).
- :func:`diagnostics` — ESS, imbalance, γ and winsorized share per node,
  coloured by solver status.
- :func:`agreement` — two methods' node scores against each other, with
  Spearman and Pearson correlations.
- :func:`save` — self-contained HTML (plotly.js embedded, works offline) or
  PNG (needs kaleido and a Chrome/Chromium).

Example::

    >>> fig = cp.plot.compare(classic, med)       # 1 + 2 columns, a row per node family
    >>> fig.show()                                # Jupyter / VS Code; in Colab: pio.renderers.default = "colab"
    >>> cp.plot.save(fig, "compare.html")         # offline, self-contained
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, describe

__all__ = ["compare", "localization", "diagnostics", "agreement", "save", "top_share", "correlations",
           "METHOD_TITLES", "STATUS_COLORS"]

#: Default column titles per ``method`` value of ``to_dataframe()``.
METHOD_TITLES = {
    "patch:exact": "Classic patching",
    "patch:attribution": "Attribution patching",
    "resample": "Resample AIE",
    "resample:stratified": "Resample AIE (within topic)",
    "eb:unadjusted": "EB-AIE unadjusted",
    "eb:adjusted": "EB-AIE adjusted",
}
_METHOD_ORDER = list(METHOD_TITLES)

#: Marker colour of each solver status in :func:`diagnostics`.
STATUS_COLORS = {"converged": "#1b9e77", "max_iter": "#e6ab02", "infeasible": "#d62728", "none": "#7f7f7f"}

_REQUIRED = ("node", "kind", "layer", "head", "pos", "method", "value")
_FAMILY_TITLES = {"resid": "Residual stream", "head": "Attention heads", "mlp": "MLP"}
_MISSING = "#cfcfcf"  # background: cells that were not computed


def _go():
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as err:  # pragma: no cover - plotly is a dependency
        raise ImportError("confounded_patching.plot requires plotly; install it with `pip install plotly`") from err
    return go, make_subplots


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Column:
    """One method's per-node values, as one heatmap column of :func:`compare`."""

    method: str
    title: str
    df: object  # pandas.DataFrame, one row per node
    tokens: list = field(default_factory=list)
    normalization: str | None = None
    metric: str | None = None

    @property
    def is_score(self) -> bool:
        return self.method.startswith("patch:")

    @property
    def units(self) -> tuple:
        """Columns with equal ``units`` share a colour range within a row."""
        return ("score", self.normalization) if self.is_score else ("aie", self.metric)


def _opt_int(x):
    """An int, or None for None/NaN (pandas turns None into NaN in numeric columns)."""
    if x is None:
        return None
    try:
        if isinstance(x, float) and math.isnan(x):
            return None
        return int(x)
    except (TypeError, ValueError):
        return None


def _frame(result):
    """(long-form DataFrame, source object) of a result or a DataFrame, with the required columns checked."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        df = result
    elif hasattr(result, "to_dataframe"):
        df = result.to_dataframe()
    else:
        raise InputError("results must be PatchingResult, ResampleResult, MediationResult or their "
                         f"to_dataframe() tables; received {describe(result)}")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"a result table needs the columns {_REQUIRED}; {type(result).__name__} lacks {missing}")
    df = df.copy()
    # object columns keep None (not NaN) for "no head" / "every position", also through concat
    df["head"] = pd.Series([_opt_int(h) for h in df["head"]], index=df.index, dtype=object)
    df["pos"] = pd.Series([_opt_int(p) for p in df["pos"]], index=df.index, dtype=object)
    df["layer"] = [int(v) for v in df["layer"]]
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    return df


def _normalization(result, df) -> str:
    norm = getattr(result, "normalization", None)
    if isinstance(norm, str):
        return norm
    direction = df["direction"].iloc[0] if "direction" in df.columns and len(df) else "denoise"
    return "(patched − clean) / (clean − corrupt)" if direction == "noise" else "(patched − corrupt) / (clean − corrupt)"


def _columns(results, titles=None) -> list[_Column]:
    """Expand results into heatmap columns, one per method (a MediationResult gives two)."""
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    if not results:
        raise InputError("give at least one result, e.g. compare(classic, med)")
    cols: list[_Column] = []
    for result in results:
        df = _frame(result)
        methods = list(dict.fromkeys(df["method"]))
        methods.sort(key=lambda m: _METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER))
        tokens = list(getattr(result, "tokens", None) or [])
        for method in methods:
            sub = df[df["method"] == method].reset_index(drop=True)
            metric = str(sub["metric"].iloc[0]) if "metric" in sub.columns and len(sub) else None
            col = _Column(method=method, title=METHOD_TITLES.get(method, method), df=sub, tokens=tokens,
                          metric=metric)
            if col.is_score:
                col.normalization = _normalization(result, sub)
                if "direction" in sub.columns and method == "patch:exact":
                    col.title = f"{col.title} ({sub['direction'].iloc[0]})"
            cols.append(col)
    seen: dict[str, int] = {}
    for col in cols:  # keep titles unique
        seen[col.title] = seen.get(col.title, 0) + 1
        if seen[col.title] > 1:
            col.title = f"{col.title} ({seen[col.title]})"
    if titles is not None:
        if isinstance(titles, dict):
            for col in cols:
                col.title = str(titles.get(col.method, col.title))
        else:
            titles = list(titles)
            if len(titles) != len(cols):
                raise InputError(f"titles must give one title per column ({len(cols)}: "
                                 f"{[c.method for c in cols]}), or be a dict method -> title; "
                                 f"received {len(titles)} titles")
            for col, t in zip(cols, titles):
                col.title = str(t)
    return cols


# ----------------------------------------------------------------------------- labels and hover


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"


def _hover(row, title: str) -> str:
    """Hover text of one node: label, value, interval and diagnostics."""
    get = lambda k: row[k] if k in row and row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k])) else None
    lines = [f"<b>{row['node']}</b>  ({title})", f"value: {_fmt(row['value'])}"]
    if get("ci_low") is not None and get("ci_high") is not None:
        lines.append(f"95% interval: [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]")
    if get("se") is not None:
        lines.append(f"se: {_fmt(row['se'])}")
    diag = [f"{name} {_fmt(row[k])}" for k, name in (("ess", "ESS"), ("gamma", "γ"), ("imbalance", "imbalance"))
            if get(k) is not None]
    if diag:
        lines.append(" · ".join(diag))
    extra = []
    if get("status") is not None:
        extra.append(f"status {row['status']}")
    if get("winsorized") is not None:
        extra.append(f"winsorized {100 * float(row['winsorized']):.1f}%")
    if get("n_pairs") is not None:
        extra.append(f"{int(row['n_pairs'])} pairs")
    if extra:
        lines.append(" · ".join(extra))
    return "<br>".join(lines)


def _pos_sort_key(p):
    if p is None:
        return (2, 0)
    return (0, p) if p >= 0 else (1, p)


def _pos_label(pos, tokens) -> str:
    """``tok_i`` label of a position from the first prompt's token labels (plus ``pos -k``), else ``pos -k``."""
    if pos is None:
        return "all positions"
    if tokens and -len(tokens) <= pos < len(tokens):
        # negative positions align from the end of each prompt: the token is the first prompt's, so say both
        return str(tokens[pos]) if pos >= 0 else f"{tokens[pos]}<br>pos {pos}"
    return f"pos {pos}"


def _colorbar_title(col: _Column) -> str:
    if col.is_score:
        norm = col.normalization or ""
        if norm.startswith("(patched − clean)"):
            sign = "0 = unharmed · −1 (red) = effect destroyed"
        else:
            sign = "1 (blue) = recovers clean · 0 = corrupt"
        return f"score = {norm}<br>{sign}"
    metric = col.metric or "y"
    return f"AIE, units of y = {metric}<br>blue > 0: resampling the node raises y"


# ----------------------------------------------------------------------------- compare


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
        return _FAMILY_TITLES[self.family]

    def select(self, df):
        sub = df[df["kind"] == self.family]
        if self.family == "head":
            sub = sub[[p == self.head_pos for p in sub["pos"]]]
        return sub


def _rows(cols: list[_Column]) -> list[_Row]:
    import pandas as pd

    all_df = pd.concat([c.df for c in cols], ignore_index=True)
    rows = []
    for family in ("resid", "head", "mlp"):
        fam = all_df[all_df["kind"] == family]
        if fam.empty:
            continue
        layers = list(range(min(fam["layer"]), max(fam["layer"]) + 1))
        if family == "head":
            for pos in sorted(set(fam["pos"]), key=_pos_sort_key):
                sub = fam[[p == pos for p in fam["pos"]]]
                heads = [h for h in sub["head"] if h is not None]
                rows.append(_Row("head", pos, list(range(max(heads) + 1)) if heads else [0], layers))
        else:
            rows.append(_Row(family, None, sorted(set(fam["pos"]), key=_pos_sort_key), layers))
    return rows


def _grid(row: _Row, col: _Column):
    """(z, hover text) arrays ``[layers, xs]`` of one panel; NaN where the column has no node."""
    z = np.full((len(row.layers), len(row.xs)), np.nan)
    text = [["not computed" for _ in row.xs] for _ in row.layers]
    sub = row.select(col.df)
    xi = {x: i for i, x in enumerate(row.xs)}
    for rec in sub.to_dict("records"):
        key = rec["head"] if row.family == "head" else rec["pos"]
        if key not in xi:
            continue
        i, j = rec["layer"] - row.layers[0], xi[key]
        z[i, j] = rec["value"]
        text[i][j] = _hover(rec, col.title)
    return z, text


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
    go, make_subplots = _go()
    _check_zmax(zmax)
    cols = _columns(results, titles)
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
            z, text = grids[c - 1]
            k = ranges[(r, col.units)][0]
            fig.add_trace(go.Heatmap(z=z, x=list(range(len(row.xs))), y=row.layers, text=text,
                                     hovertemplate="%{text}<extra></extra>", coloraxis=f"coloraxis{k}",
                                     xgap=1, ygap=1, name=f"{col.title} · {row.title}"), row=r, col=c)
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
                          title=dict(text=_colorbar_title(col), side="right", font=dict(size=10))))
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
                ticktext = [_pos_label(p, tokens) for p in row.xs]
                xtitle = "position"
            sp.xaxis.update(tickmode="array", tickvals=list(range(len(row.xs))), ticktext=ticktext,
                            title=dict(text=xtitle, font=dict(size=11)), showgrid=False, zeroline=False,
                            range=[-0.5, len(row.xs) - 0.5])
            if c > 1:
                sp.xaxis.update(matches=first_x)
            sp.yaxis.update(autorange="reversed", showgrid=False, zeroline=False, tickmode="linear", tick0=0,
                            dtick=1 if len(row.layers) <= 16 else 5)
        first.yaxis.update(title=dict(text=f"{row.title}<br>layer", font=dict(size=12)))
    metrics = sorted({c.metric for c in cols if c.metric})
    subtitle = ("colour range shared within a row among columns with the same units · grey = not computed"
                + (f" · outcome: {', '.join(metrics)}" if metrics else ""))
    fig.update_layout(
        title=dict(text=f"Per-node effects<br><sup>{subtitle}</sup>", x=0.01),
        height=plot_height + 170,
        width=plot_width + 130 + 120 * len(unit_groups),
        margin=dict(l=90, r=40 + 120 * len(unit_groups), t=110, b=60),
        plot_bgcolor=_MISSING, paper_bgcolor="white", template="plotly_white",
    )
    return fig


# ----------------------------------------------------------------------------- localization


def top_share(values, top: float = 0.1) -> float:
    """Share of the total |value| held by the largest ``ceil(top * n)`` nodes (NaN dropped)."""
    a = np.abs(np.asarray(values, dtype=float))
    a = np.sort(a[np.isfinite(a)])[::-1]
    if a.size == 0 or a.sum() == 0:
        return float("nan")
    k = max(1, int(math.ceil(top * a.size)))
    return float(a[:k].sum() / a.sum())


def localization(*results, top: float = 0.1):
    """How concentrated the effects are: per-node |AIE| sorted by magnitude, one line per method.

    After Fotouhi et al. (2024), Figure 2: with a MediationResult the lines
    are EB-AIE unadjusted and adjusted; other results add lines of their
    own. Left: |value| sorted from the largest down (x = node rank as a
    share of the nodes, so methods with different node counts align).
    Right: cumulative share of the total |value| held by the top nodes,
    against the uniform diagonal. The title gives, per method, the share of
    the total |value| held by the top ``top`` (10%) of nodes.

    When the lines have different units (e.g. a patching score next to an
    AIE), the left panel divides each line by its largest value.
    """
    go, make_subplots = _go()
    if not (isinstance(top, (int, float)) and 0 < top < 1):
        raise InputError(f"top must be a share in (0, 1); received {describe(top)}")
    cols = _columns(results)
    same_units = len({c.units for c in cols}) == 1
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("|value| per node, sorted by magnitude",
                                        "cumulative share of total |value|"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    shares = []
    for i, col in enumerate(cols):
        df = col.df[np.isfinite(col.df["value"])]
        if df.empty:
            shares.append((col.title, float("nan")))
            continue
        order = np.argsort(-np.abs(df["value"].to_numpy()), kind="stable")
        vals = df["value"].to_numpy()[order]
        nodes = df["node"].to_numpy()[order]
        a = np.abs(vals)
        n = len(a)
        frac = (np.arange(n) + 1) / n
        y = a if same_units else a / (a.max() if a.max() > 0 else 1)
        color = palette[i % len(palette)]
        hover = [f"<b>{nd}</b><br>{col.title}: {_fmt(v)}<br>rank {k + 1} of {n}" for k, (nd, v) in
                 enumerate(zip(nodes, vals))]
        fig.add_trace(go.Scatter(x=frac, y=y, mode="lines", name=col.title, line=dict(color=color, width=2),
                                 text=hover, hovertemplate="%{text}<extra></extra>", legendgroup=col.title),
                      row=1, col=1)
        total = a.sum()
        cum = np.cumsum(a) / total if total > 0 else np.zeros(n)
        fig.add_trace(go.Scatter(x=np.concatenate([[0], frac]), y=np.concatenate([[0], cum]), mode="lines",
                                 name=col.title, line=dict(color=color, width=2), showlegend=False,
                                 legendgroup=col.title,
                                 hovertemplate="top %{x:.0%} of nodes: %{y:.0%} of total<extra>" + col.title
                                 + "</extra>"), row=1, col=2)
        shares.append((col.title, top_share(vals, top)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dot"),
                             name="uniform", hoverinfo="skip"), row=1, col=2)
    fig.add_vline(x=top, line=dict(color="#555", dash="dash", width=1), row=1, col=2)
    share_text = " vs ".join(f"{100 * s:.0f}% ({t})" if math.isfinite(s) else f"n/a ({t})" for t, s in shares)
    metric = next((c.metric for c in cols if c.metric), None)
    ytitle = (f"|AIE| (units of {metric})" if metric and not cols[0].is_score else "|score|") if same_units \
        else "|value| / largest"
    fig.update_xaxes(title_text="node rank (share of nodes)", tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="top share of nodes", tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text=ytitle, row=1, col=1)
    fig.update_yaxes(title_text="share of total |value|", tickformat=".0%", range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        title=dict(text=f"Localization: the top {100 * top:.0f}% of nodes hold {share_text} of the total |value|",
                   x=0.01, font=dict(size=14)),
        height=440, width=1100, template="plotly_white", legend=dict(orientation="h", y=-0.2),
        meta={"top_share": {t: s for t, s in shares}},
    )
    return fig


# ----------------------------------------------------------------------------- diagnostics


def diagnostics(result):
    """ESS, imbalance, γ and winsorized share per node, marker colour = solver status.

    Args:
        result: a ``MediationResult`` (both estimators are drawn, circles =
            adjusted, crosses = unadjusted) or a table with ``ess``,
            ``imbalance``, ``gamma`` and ``status`` columns.

    Reading it: a small ESS means few prompts carry the weights (noisy
    estimates); a large imbalance or status ``max_iter``/``infeasible`` means
    the balancing constraints were not met (the estimate is unreliable or
    NaN); γ is the tolerance the rule chose (large γ shrinks the AIE toward
    0). The dashed line is the ESS floor of the γ rule when known.
    """
    go, make_subplots = _go()
    df = _frame(result)
    panels = [(k, t) for k, t in (("ess", "ESS"), ("imbalance", "imbalance ‖Gᵀw‖∞"), ("gamma", "γ chosen"),
                                  ("winsorized", "winsorized share")) if k in df.columns]
    if not any(k in df.columns for k in ("ess", "imbalance", "gamma")):
        raise InputError(f"diagnostics needs ess / imbalance / gamma columns (a MediationResult); "
                         f"{type(result).__name__} has {list(df.columns)}")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[t for _, t in panels])
    order = list(dict.fromkeys(df["node"]))
    symbols = {"eb:adjusted": "circle", "eb:unadjusted": "x"}
    if "status" not in df.columns:
        df["status"] = "none"
    for method in dict.fromkeys(df["method"]):
        sub = df[df["method"] == method]
        title = METHOD_TITLES.get(method, method)
        colors = [STATUS_COLORS.get(str(s), "#7f7f7f") for s in sub["status"]]
        hover = [_hover(rec, title) for rec in sub.to_dict("records")]
        symbol = symbols.get(method, "diamond")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=title, legendgroup=method,
                                 marker=dict(color="#bbbbbb", symbol=symbol, size=8, line=dict(width=1, color="#333"))),
                      row=1, col=1)
        for r, (k, t) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=sub["node"], y=_as_float(sub[k]), mode="markers", name=title,
                                     legendgroup=method, showlegend=False,
                                     marker=dict(color=colors, symbol=symbol, size=6,
                                                 line=dict(width=0.5, color="#333")),
                                     text=hover, hovertemplate="%{text}<extra></extra>"), row=r, col=1)
    for status, color in STATUS_COLORS.items():  # legend entries of the status colours
        if status in set(map(str, df["status"])):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"status: {status}",
                                     marker=dict(color=color, size=8)), row=1, col=1)
    floor = _ess_floor(result)
    if floor is not None and panels[0][0] == "ess":
        fig.add_hline(y=floor, line=dict(color="#555", dash="dash", width=1), row=1, col=1,
                      annotation_text="ESS floor of the γ rule", annotation_position="top left")
    counts = df.drop_duplicates(["node", "method"])["status"].value_counts()
    status_text = ", ".join(f"{v} {k}" for k, v in counts.items())
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, tickfont=dict(size=8))
    for r, (k, _) in enumerate(panels, start=1):
        if k == "winsorized":
            fig.update_yaxes(range=[0, 1], tickformat=".0%", row=r, col=1)
    fig.update_xaxes(title_text="node (forward order)", row=len(panels), col=1)
    fig.update_layout(
        title=dict(text=f"Weight diagnostics per node<br><sup>status (node × estimator): {status_text}</sup>",
                   x=0.01),
        height=220 * len(panels) + 120, width=1300, template="plotly_white",
        legend=dict(orientation="h", y=1.06, x=1, xanchor="right"),
    )
    return fig


def _as_float(series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float).to_numpy()


def _ess_floor(result):
    for name in ("adjusted", "unadjusted"):
        tab = getattr(result, name, None)
        rule = getattr(tab, "gamma_rule", None) or {}
        if "ess_floor" in rule and getattr(tab, "n", None):
            return float(rule["ess_floor"]) * float(tab.n)
    return None


# ----------------------------------------------------------------------------- agreement


def _pick(result, method, argument):
    cols = _columns((result,))
    if method is None:
        methods = [c.method for c in cols]
        method = "eb:adjusted" if "eb:adjusted" in methods else methods[0]
    found = [c for c in cols if c.method == method]
    if not found:
        raise InputError(f"{argument} has no method {method!r}; it has {[c.method for c in cols]}")
    return found[0]


def _spearman(x, y) -> float:
    import pandas as pd

    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def correlations(x, y) -> tuple[float, float]:
    """(Spearman, Pearson) correlations of two vectors (NaN pairs dropped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return _spearman(x, y), float(np.corrcoef(x, y)[0, 1])


def agreement(a, b, *, method_a: str | None = None, method_b: str | None = None):
    """Node scores of two methods against each other, with Spearman and Pearson correlations in the title.

    Args:
        a, b: results or tables; nodes are matched by label.
        method_a, method_b: which method of a multi-method result (default
            ``"eb:adjusted"`` when present, else the first).

    Points are coloured by node kind; bars show intervals where the results
    have them. The axes keep each method's own units.
    """
    go, _ = _go()
    ca, cb = _pick(a, method_a, "a"), _pick(b, method_b, "b")
    left = ca.df.drop_duplicates("node").set_index("node")
    right = cb.df.drop_duplicates("node").set_index("node")
    common = [n for n in left.index if n in right.index]
    if not common:
        raise InputError(f"a ({ca.title}) and b ({cb.title}) have no node in common; e.g. a has "
                         f"{list(left.index[:3])}, b has {list(right.index[:3])}")
    left, right = left.loc[common], right.loc[common]
    x, y = left["value"].to_numpy(float), right["value"].to_numpy(float)
    rho, r = correlations(x, y)
    ok = int((np.isfinite(x) & np.isfinite(y)).sum())
    fig = go.Figure()
    kinds = left["kind"].to_numpy()
    palette = {"mlp": "#ff7f0e", "head": "#1f77b4", "resid": "#2ca02c"}
    for kind in ("resid", "head", "mlp"):
        m = kinds == kind
        if not m.any():
            continue
        err = {}
        for axis, side in (("x", left), ("y", right)):
            if "ci_low" in side.columns and "ci_high" in side.columns:
                v = side["value"].to_numpy(float)[m]
                lo, hi = _as_float(side["ci_low"])[m], _as_float(side["ci_high"])[m]
                err[f"error_{axis}"] = dict(type="data", array=np.nan_to_num(hi - v), arrayminus=np.nan_to_num(v - lo),
                                            thickness=0.7, width=0, color="rgba(0,0,0,0.25)")
        hover = [f"<b>{n}</b><br>{ca.title}: {_fmt(u)}<br>{cb.title}: {_fmt(w)}"
                 for n, u, w in zip(np.asarray(common)[m], x[m], y[m])]
        fig.add_trace(go.Scatter(x=x[m], y=y[m], mode="markers", name=_FAMILY_TITLES[kind],
                                 marker=dict(color=palette[kind], size=7, opacity=0.8), text=hover,
                                 hovertemplate="%{text}<extra></extra>", **err))
    units = lambda c: f"{c.title} ({'score' if c.is_score else 'units of ' + (c.metric or 'y')})"
    fig.add_hline(y=0, line=dict(color="#aaa", width=1))
    fig.add_vline(x=0, line=dict(color="#aaa", width=1))
    fig.update_layout(
        title=dict(text=f"{cb.title} vs {ca.title}: Spearman ρ = {rho:.2f}, Pearson r = {r:.2f} "
                        f"({ok} nodes)", x=0.01, font=dict(size=14)),
        xaxis_title=units(ca), yaxis_title=units(cb), height=520, width=640, template="plotly_white",
        meta={"spearman": rho, "pearson": r, "n": ok},
    )
    return fig


# ----------------------------------------------------------------------------- saving


def save(fig, path: str | os.PathLike, *, scale: float = 2.0) -> Path:
    """Write ``fig`` as self-contained HTML (``.html``: plotly.js embedded, no CDN) or an image.

    ``.png``/``.svg``/``.pdf`` need kaleido and a Chrome/Chromium (``pip
    install kaleido``); without them this raises ``ImportError`` / the
    kaleido error and writes nothing. The file is written under a temporary
    name and renamed, so a failure leaves no partial file.
    """
    from .results import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        html = fig.to_html(include_plotlyjs=True, full_html=True)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    if suffix in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        import importlib.util

        if importlib.util.find_spec("kaleido") is None:
            raise ImportError(f"saving {suffix} images needs kaleido and Chrome/Chromium: pip install kaleido "
                              f"(or save as .html, which needs nothing)")
        data = fig.to_image(format=suffix.lstrip(".").replace("jpg", "jpeg"), scale=scale)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    raise InputError(f"path must end in .html, .png, .svg, .pdf, .jpg or .webp; received {str(path)!r}")
