"""Summary figures of per-node effects, and saving figures.

- :func:`localization` — per-node |AIE| sorted by magnitude, unadjusted
  versus adjusted, and the share of the total |AIE| held by the top 10% of
  nodes (Fotouhi et al. 2024, Figure 2); :func:`top_share` is that share.
- :func:`diagnostics` — ESS, imbalance, γ and winsorized share per node,
  coloured by solver status.
- :func:`agreement` — two methods' node scores against each other, with
  Spearman and Pearson correlations (:func:`correlations`).
- :func:`save` — self-contained HTML (plotly.js embedded, works offline) or
  PNG (needs kaleido and a Chrome/Chromium).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, describe
from ..results import EB_ADJUSTED, EB_UNADJUSTED, atomic_write
from .frames import (FAMILY_TITLES, METHOD_TITLES, STATUS_COLORS, as_float, columns, fmt, frame, hover_text,
                     plotly_modules)

__all__ = ["top_share", "localization", "diagnostics", "agreement", "correlations", "save"]


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
    go, make_subplots = plotly_modules()
    if not (isinstance(top, (int, float)) and 0 < top < 1):
        raise InputError(f"top must be a share in (0, 1); received {describe(top)}")
    cols = columns(results)
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
        hover = [f"<b>{nd}</b><br>{col.title}: {fmt(v)}<br>rank {k + 1} of {n}" for k, (nd, v) in
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
    go, make_subplots = plotly_modules()
    df = frame(result)
    panels = [(k, t) for k, t in (("ess", "ESS"), ("imbalance", "imbalance ‖Gᵀw‖∞"), ("gamma", "γ chosen"),
                                  ("winsorized", "winsorized share")) if k in df.columns]
    if not any(k in df.columns for k in ("ess", "imbalance", "gamma")):
        raise InputError(f"diagnostics needs ess / imbalance / gamma columns (a MediationResult); "
                         f"{type(result).__name__} has {list(df.columns)}")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[t for _, t in panels])
    order = list(dict.fromkeys(df["node"]))
    symbols = {EB_ADJUSTED: "circle", EB_UNADJUSTED: "x"}
    if "status" not in df.columns:
        df["status"] = "none"
    for method in dict.fromkeys(df["method"]):
        sub = df[df["method"] == method]
        title = METHOD_TITLES.get(method, method)
        colors = [STATUS_COLORS.get(str(s), "#7f7f7f") for s in sub["status"]]
        hover = [hover_text(rec, title) for rec in sub.to_dict("records")]
        symbol = symbols.get(method, "diamond")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=title, legendgroup=method,
                                 marker=dict(color="#bbbbbb", symbol=symbol, size=8, line=dict(width=1, color="#333"))),
                      row=1, col=1)
        for r, (k, t) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=sub["node"], y=as_float(sub[k]), mode="markers", name=title,
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


def _ess_floor(result):
    for name in ("adjusted", "unadjusted"):
        tab = getattr(result, name, None)
        rule = getattr(tab, "gamma_rule", None) or {}
        if "ess_floor" in rule and getattr(tab, "n", None):
            return float(rule["ess_floor"]) * float(tab.n)
    return None


def _pick(result, method, argument):
    cols = columns((result,))
    if method is None:
        methods = [c.method for c in cols]
        method = EB_ADJUSTED if EB_ADJUSTED in methods else methods[0]
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
    go, _ = plotly_modules()
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
                lo, hi = as_float(side["ci_low"])[m], as_float(side["ci_high"])[m]
                err[f"error_{axis}"] = dict(type="data", array=np.nan_to_num(hi - v), arrayminus=np.nan_to_num(v - lo),
                                            thickness=0.7, width=0, color="rgba(0,0,0,0.25)")
        hover = [f"<b>{n}</b><br>{ca.title}: {fmt(u)}<br>{cb.title}: {fmt(w)}"
                 for n, u, w in zip(np.asarray(common)[m], x[m], y[m])]
        fig.add_trace(go.Scatter(x=x[m], y=y[m], mode="markers", name=FAMILY_TITLES[kind],
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


def save(fig, path: str | os.PathLike, *, scale: float = 2.0) -> Path:
    """Write ``fig`` as self-contained HTML (``.html``: plotly.js embedded, no CDN) or an image.

    ``.png``/``.svg``/``.pdf`` need kaleido and a Chrome/Chromium (``pip
    install kaleido``); without them this raises ``ImportError`` / the
    kaleido error and writes nothing. The file is written under a temporary
    name and renamed, so a failure leaves no partial file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        html = fig.to_html(include_plotlyjs=True, full_html=True)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    if suffix in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        if importlib.util.find_spec("kaleido") is None:
            raise ImportError(f"saving {suffix} images needs kaleido and Chrome/Chromium: pip install kaleido "
                              f"(or save as .html, which needs nothing)")
        data = fig.to_image(format=suffix.lstrip(".").replace("jpg", "jpeg"), scale=scale)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    raise InputError(f"path must end in .html, .png, .svg, .pdf, .jpg or .webp; received {str(path)!r}")
