"""Summary figures of per-node effects, and saving figures.

- :func:`localization` — per-node |AIE| sorted by magnitude, unadjusted
  versus adjusted, and the share of the total |AIE| held by the top 10% of
  nodes (Fotouhi et al. 2024, Figure 2); :func:`top_share` is that share.
- :func:`diagnostics` — the EB-AIE's diagnostics per node grouped by layer
  (canonical correlation with the query, pair-weight ESS, ESS, imbalance, γ,
  winsorized share), with the thresholds of the ``reliable`` flag drawn.
- :func:`agreement` — two methods' node scores against each other, with
  Spearman and Pearson correlations (:func:`correlations`).
- :func:`assess` — each column's agreement with the exact (interventional)
  AIE of the run, and a verdict: ``"trust"``, ``"caution"``,
  ``"do not trust"`` (the rule of :func:`~confounded_patching.interventions.confirm.verdict`),
  ``"exact"`` or ``"not checked"``.
- :func:`save` — self-contained HTML (plotly.js embedded, works offline) or
  PNG (needs kaleido and a Chrome/Chromium); :func:`show` — a notebook's
  renderer, else a browser.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, describe
from ..results import EB_ADJUSTED, EB_UNADJUSTED, atomic_write, is_exact_resample
from .frames import (FAMILY_TITLES, METHOD_TITLES, STATUS_COLORS, Column, as_float, columns, fmt, frame,
                     hover_text, plotly_modules)

__all__ = ["top_share", "localization", "diagnostics", "RELIABILITY_COLORS", "agreement", "correlations", "assess", "exact_reference",
           "VERDICTS", "save", "show"]

#: The verdicts of :func:`assess`, from best to worst, and ``"exact"`` / ``"not checked"``.
VERDICTS = ("exact", "trust", "caution", "do not trust", "not checked")


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


#: Marker colour of a node in :func:`diagnostics`: reliable, flagged unreliable, or without a value.
RELIABILITY_COLORS = {"reliable": "#1b9e77", "unreliable": "#e6ab02", "no value": "#d62728"}
_KIND_OFFSET = {"resid": -0.3, "mlp": 0.3}


def _rule(result) -> dict:
    """The thresholds of the ``reliable`` flag the result was computed with (the defaults for a table)."""
    for name in ("adjusted", "unadjusted"):
        rule = getattr(getattr(result, name, None), "reliability", None)
        if rule:
            return dict(rule)
    from ..estimation.reliability import ReliabilityRule

    return ReliabilityRule().to_dict()


def _layer_x(df) -> np.ndarray:
    """x of each node: its layer, residual stream left, heads spread in the middle, MLP right."""
    heads = [h for h in df["head"] if h is not None]
    n_heads = max(heads) + 1 if heads else 1
    x = []
    for kind, layer, head in zip(df["kind"], df["layer"], df["head"]):
        if kind == "head" and head is not None:
            off = -0.18 + 0.36 * (head / max(1, n_heads - 1))
        else:
            off = _KIND_OFFSET.get(kind, 0.0)
        x.append(layer + off)
    return np.asarray(x, float)


def diagnostics(result):
    """The EB-AIE's diagnostics per node, grouped by layer, with the thresholds of the ``reliable`` flag drawn.

    Args:
        result: a ``MediationResult`` (both estimators: circles = adjusted, crosses = unadjusted) or a table
            with ``ess`` / ``imbalance`` / ``gamma`` columns (and ``query_corr``, ``pair_ess``, ``reliable``,
            ``status`` when it has them).

    x = layer: within a layer the residual stream sits left, the heads in the middle (by head index) and
    the MLP right, so hundreds of nodes stay readable. Marker colour: reliable, unreliable, or no value
    (infeasible balance, not identifiable). Panels and their thresholds (:mod:`~confounded_patching.estimation.reliability`,
    drawn as dashed red lines):

    - canonical correlation of node and query: unreliable above ``max_query_corr`` (0.7): the node is
      nearly determined by the query, there is no overlap to reweight;
    - pair-weight ESS as a share of n·K: unreliable below ``min_pair_ess`` (1e-3): the estimate rests on a
      handful of pairs;
    - ESS of the node's weights as a share of the prompts, with the topic model's ESS (adjusted: unreliable
      when it is below ``min_ess_x``, 10%, of the prompts: topics barely overlap in query space);
    - imbalance ‖Gᵀw‖∞, γ chosen and the winsorized share (no threshold; status ``infeasible`` or
      ``max_iter`` makes a node unreliable whatever they say).

    ``fig.layout.meta`` holds the thresholds (``"rule"``) and, per estimator, the count of each reason.
    """
    go, make_subplots = plotly_modules()
    df = frame(result)
    if not any(k in df.columns for k in ("ess", "imbalance", "gamma")):
        raise InputError(f"diagnostics needs ess / imbalance / gamma columns (a MediationResult); "
                         f"{type(result).__name__} has {list(df.columns)}")
    rule = _rule(result)
    n = float(df["n"].iloc[0]) if "n" in df.columns and len(df) else float("nan")
    if "ess" in df.columns and math.isfinite(n) and n > 0:
        df["ess_share"] = as_float(df["ess"]) / n
    catalog = [("query_corr", "canonical correlation of node and query"),
               ("pair_ess", "pair-weight ESS (share of n·K, log)"),
               ("ess_share" if "ess_share" in df.columns else "ess",
                "ESS of the node's weights (share of prompts)" if "ess_share" in df.columns else "ESS"),
               ("imbalance", "imbalance ‖Gᵀw‖∞ (log)"), ("gamma", "γ chosen"), ("winsorized", "winsorized share")]
    panels = [(k, t) for k, t in catalog if k in df.columns and np.isfinite(as_float(df[k])).any()]
    n_rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=n_rows, cols=2, shared_xaxes=True, vertical_spacing=0.12 / max(1, n_rows - 1) + 0.04,
                        horizontal_spacing=0.08, subplot_titles=[t for _, t in panels])
    value = as_float(df["value"])
    reliable = (df["reliable"].astype(bool).to_numpy() if "reliable" in df.columns
                else np.isfinite(value))
    category = np.where(~np.isfinite(value), "no value", np.where(reliable, "reliable", "unreliable"))
    x = _layer_x(df)
    symbols = {EB_ADJUSTED: "circle", EB_UNADJUSTED: "x-thin-open"}
    where = {k: (i // 2 + 1, i % 2 + 1) for i, (k, _) in enumerate(panels)}
    for method in dict.fromkeys(df["method"]):
        m = (df["method"] == method).to_numpy()
        title = METHOD_TITLES.get(method, method)
        symbol = symbols.get(method, "diamond")
        recs = df[m].to_dict("records")
        hover = [hover_text(rec, title) for rec in recs]
        colors = [RELIABILITY_COLORS[c] for c in category[m]]
        marker = dict(color=colors, symbol=symbol, size=6 if symbol == "circle" else 7,
                      line=dict(width=1.2 if symbol != "circle" else 0.4, color=colors if symbol != "circle" else "#333"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=title, legendgroup=method,
                                 marker=dict(color="#888", symbol=symbol, size=8, line=dict(width=1.2, color="#444"))),
                      row=1, col=1)
        for k, _ in panels:
            r, c = where[k]
            fig.add_trace(go.Scatter(x=x[m], y=as_float(df[k])[m], mode="markers", name=title, legendgroup=method,
                                     showlegend=False, marker=marker, text=hover,
                                     hovertemplate="%{text}<extra></extra>"), row=r, col=c)
    for cat, color in RELIABILITY_COLORS.items():
        if (category == cat).any():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=cat, marker=dict(color=color, size=9)),
                          row=1, col=1)
    red = dict(color="#c62828", dash="dash", width=1.3)
    if "query_corr" in where:
        r, c = where["query_corr"]
        fig.add_hline(y=rule["max_query_corr"], line=red, row=r, col=c, annotation_text=(
            f"unreliable above {rule['max_query_corr']:g}: node nearly determined by the query"),
            annotation_position="bottom left", annotation_font=dict(size=10, color="#c62828"))
        fig.update_yaxes(range=[0, 1.05], row=r, col=c)
    if "pair_ess" in where:
        r, c = where["pair_ess"]
        fig.add_hline(y=rule["min_pair_ess"], line=red, row=r, col=c)
        sp = fig.get_subplot(r, c)  # on a log axis an annotation's y is the exponent (add_hline misplaces it)
        fig.add_annotation(x=0, xref=f"{sp.xaxis.plotly_name.replace('axis', '')} domain",
                           y=math.log10(rule["min_pair_ess"]), yref=sp.yaxis.plotly_name.replace("axis", ""),
                           text=f"unreliable below {rule['min_pair_ess']:g}: a handful of pairs carry it",
                           showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=10, color="#c62828"))
        fig.update_yaxes(type="log", dtick=1, exponentformat="power", row=r, col=c)
    if "ess_share" in where:
        r, c = where["ess_share"]
        fig.update_yaxes(range=[0, 1.05], tickformat=".0%", row=r, col=c)
        ess_x = as_float(df["ess_x"]) if "ess_x" in df.columns else np.array([np.nan])
        ess_x = ess_x[np.isfinite(ess_x)]
        if ess_x.size:
            fig.add_hline(y=rule["min_ess_x"], line=red, row=r, col=c, annotation_font=dict(size=10, color="#c62828"),
                          annotation_text=f"adjusted unreliable if the topic model's ESS is below {rule['min_ess_x']:.0%}",
                          annotation_position="bottom left")
            fig.add_hline(y=float(ess_x[0]) / n, line=dict(color="#555", dash="dot", width=1.2), row=r, col=c,
                          annotation_text=f"topic model's ESS: {ess_x[0]:.0f} of {n:.0f}",
                          annotation_position="top right", annotation_font=dict(size=10, color="#555"))
    if "imbalance" in where:
        r, c = where["imbalance"]
        fig.update_yaxes(type="log", dtick=1, exponentformat="power", row=r, col=c)
    if "winsorized" in where:
        r, c = where["winsorized"]
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=r, col=c)
    layers = sorted(set(df["layer"]))
    dtick = 1 if len(layers) <= 16 else 2 if len(layers) <= 32 else 5
    fig.update_xaxes(range=[min(layers) - 0.5, max(layers) + 0.5], dtick=dtick, tick0=0, showgrid=False,
                     zeroline=False)
    for c in (1, 2):
        fig.update_xaxes(title_text="layer (resid left · heads middle · MLP right)", title_font=dict(size=11),
                         row=n_rows, col=c)
    separators = []  # faint lines between layers, in every panel; set at once (add_vline is quadratic)
    for r in range(1, n_rows + 1):
        for c in (1, 2):
            sp = fig.get_subplot(r, c)
            if sp is None:
                continue
            xref, yref = sp.xaxis.plotly_name.replace("axis", ""), sp.yaxis.plotly_name.replace("axis", "")
            separators += [dict(type="line", xref=xref, yref=f"{yref} domain", x0=lay - 0.5, x1=lay - 0.5, y0=0,
                                y1=1, line=dict(color="#e4e4e4", width=1), layer="below")
                           for lay in layers[1:]]
    fig.update_layout(shapes=list(fig.layout.shapes) + separators)
    counts = {}
    if "reason" in df.columns:
        for method in dict.fromkeys(df["method"]):
            sub = df[df["method"] == method]
            tally = {}
            for reason in sub["reason"]:
                for part in reason.split("; ") if isinstance(reason, str) and reason else ():
                    key = part.split(" (")[0]
                    tally[key] = tally.get(key, 0) + 1
            counts[METHOD_TITLES.get(method, method)] = dict(sorted(tally.items(), key=lambda kv: -kv[1]))
    summary = " · ".join(f"{t}: {int(((df['method'] == m).to_numpy() & (category != 'reliable')).sum())} of "
                         f"{int((df['method'] == m).sum())} not reliable"
                         for m, t in ((m, METHOD_TITLES.get(m, m)) for m in dict.fromkeys(df["method"])))
    fig.update_layout(
        title=dict(text="Weight diagnostics per node, by layer", subtitle=dict(text=summary, font=dict(size=12)),
                   x=0.01),
        height=250 * n_rows + 200, width=1200, template="plotly_white", margin=dict(t=100, l=60, r=20, b=110),
        legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, xanchor="left"),
        meta={"rule": rule, "reasons": counts},
    )
    return fig


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


# ----------------------------------------------------------------------------- agreement with the exact AIE


def exact_reference(cols: list[Column]) -> dict:
    """``node label -> exact resample AIE`` of this run: a resample column's exactly computed nodes (those of a
    Confirmation included, see :func:`~.frames.columns`); the first resample column that has any."""
    for col in cols:
        if not col.is_resample:
            continue
        df = col.df
        if col.exact:
            keep = [n in col.exact for n in df["node"]]
        elif "computed" in df.columns:
            keep = [str(c).startswith("exact") for c in df["computed"]]
        else:
            keep = [is_exact_resample(col.method)] * len(df)
        ref = {n: float(v) for n, v, k in zip(df["node"], df["value"], keep) if k and np.isfinite(v)}
        if ref:
            return ref
    return {}


def _short(stats: dict, verdict: str, signed: bool) -> str:
    r = "r" if signed else "r of |v|"
    return (f"vs exact AIE: ρ|v| {stats['spearman_abs']:.2f} · {r} {stats['pearson']:.2f} · "
            f"{stats['n']} nodes · {verdict}")


def _compare_values(col: Column, ref: dict) -> dict:
    from ..interventions.confirm import agreement as agree
    from ..interventions.confirm import verdict as judge

    values = dict(zip(col.df["node"], col.df["value"]))
    common = [n for n in ref if n in values]
    est = np.array([values[n] for n in common], float)
    ex = np.array([ref[n] for n in common], float)
    missing = int(len(ref) - np.isfinite(est).sum())
    signed = not col.is_score
    stats = agree(est, ex)
    if not signed:  # a patching score is not an AIE: compare which nodes matter, by |value|
        ok = np.isfinite(est) & np.isfinite(ex)
        _, stats["pearson"] = correlations(np.abs(est[ok]), np.abs(ex[ok]))
    stats.update(role="compared", signed=signed, n_reference=len(ref), missing=missing)
    if stats["n"] < 3:
        stats.update(verdict="not checked", short=f"vs exact AIE: {stats['n']} of {len(ref)} nodes have a value",
                     line=f"not checked: only {stats['n']} of the {len(ref)} nodes with an exact AIE have a value")
        return stats
    stats["verdict"] = judge(stats)
    stats["short"] = _short(stats, stats["verdict"], signed)
    gap = f"; {missing} of those {len(ref)} nodes have no value" if missing else ""
    stats["line"] = (f"{stats['verdict']}: on the {stats['n']} nodes with an exact AIE, Spearman of |value| "
                     f"{stats['spearman_abs']:.2f}, Pearson{'' if signed else ' of |value|'} {stats['pearson']:.2f}, "
                     f"top-{stats['top_k']} overlap {stats['top_overlap']:.0%}{gap}")
    return stats


def assess(cols: list[Column], confirmation=None) -> list[Column]:
    """Set each column's ``agreement``: how far it agrees with the exact AIE of this run, and a verdict.

    - the resample column a Confirmation checked: the Confirmation's own ``agreement`` and ``verdict`` (its
      first-order values against the exact ones on its top and random nodes);
    - a resample column computed exactly on every node: ``"exact"`` (it is the reference);
    - every other column: its values against the exact values (:func:`exact_reference`) on the same nodes,
      with :func:`~confounded_patching.interventions.confirm.agreement` (Spearman of ``|value|``, Pearson,
      top-k overlap) and the same verdict rule (``"trust"``: Spearman of ``|value|`` and Pearson at least 0.9
      on at least 10 nodes; ``"caution"``: at least 0.7). A patching score is not in the AIE's units or sign
      convention, so its Pearson correlation is that of ``|value|``.

    Dict keys: ``verdict``, ``short`` (a few words for a column header), ``line`` (one sentence), the
    statistics (``n``, ``spearman_abs``, ``pearson``, ``top_overlap``, ``top_k`` ...) and ``role``
    (``"reference"``, ``"confirmed"``, ``"compared"`` or ``"unchecked"``).
    """
    ref = exact_reference(cols)
    for col in cols:
        fast = col.is_resample and (bool(col.exact) or ("computed" in col.df.columns and
                                                        any(c == "attribution" for c in col.df["computed"])))
        if col.is_resample and not fast:
            n = int(np.isfinite(col.df["value"]).sum())
            col.agreement = dict(role="reference", verdict="exact", n=n, short=f"exact on all {n} nodes: the reference",
                                 line=f"exact: the interventional AIE itself, computed by intervention on {n} nodes")
        elif col.is_resample and confirmation is not None and col.method == confirmation.checked:
            a = dict(confirmation.agreement) if confirmation.nodes else {"n": 0}
            verdict = confirmation.verdict
            a.update(role="confirmed", verdict=verdict, signed=True)
            if verdict == "exact":
                a.update(short="every node exact", line="exact: every node was computed exactly")
            else:
                a["short"] = _short(a, verdict, True).replace("vs exact AIE", "confirmed")
                a["line"] = confirmation.summary()
            col.agreement = a
        elif col.is_resample:
            col.agreement = dict(role="unchecked", verdict="not checked", n=0, short="not confirmed (cp.confirm)",
                                 line="not checked: first-order values with no exact confirmation in this run "
                                      "(cp.confirm runs one)")
        elif not ref:
            col.agreement = dict(role="unchecked", verdict="not checked", n=0, short="no exact AIE to check against",
                                 line="not checked: this run has no exact resample AIE to compare with")
        else:
            col.agreement = _compare_values(col, ref)
    return cols


# ----------------------------------------------------------------------------- showing


def show(fig, path: str | os.PathLike | None = None):
    """Show ``fig``: with plotly's renderer where one is active (Jupyter, VS Code, Colab), else in a browser.

    In a plain ``python`` script plotly has no renderer (``plotly.io.renderers.default`` is empty) and
    ``fig.show()`` opens nothing; then this writes a self-contained HTML file (``path``, or a temporary
    file) and opens it with the system's browser (:mod:`webbrowser`). Where no browser can be started (a
    remote shell) it prints where the file is. Returns the file written, or None when plotly rendered it.
    """
    import plotly.io as pio

    if pio.renderers.default:
        fig.show()
        return None
    import sys
    import tempfile
    import webbrowser

    if path is None:
        fd, name = tempfile.mkstemp(prefix="confounded_patching-", suffix=".html")
        os.close(fd)
        path = name
    path = save(fig, path)
    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        print(f"no notebook renderer and no browser to open: the figure is in {path}", file=sys.stderr)
    return path
