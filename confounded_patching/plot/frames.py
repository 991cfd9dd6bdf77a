"""Results as heatmap columns, and the labels and hover text of every figure.

Every figure function takes results (``PatchingResult``, ``ResampleResult``,
``MediationResult``) or their long-form ``to_dataframe()`` tables
(:data:`~confounded_patching.results.LONG_FORM_COLUMNS`, one row per node
and method). :func:`columns` turns them into :class:`Column` objects, one
per method (tag in :data:`~confounded_patching.results.METHOD_TAGS`), which
:mod:`~.heatmaps`, :mod:`~.summaries` and :mod:`~confounded_patching.report`
draw. pandas and plotly are imported by the functions that use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, describe
from ..results import (EB_ADJUSTED, EB_UNADJUSTED, LONG_FORM_COLUMNS, PATCH_ATTRIBUTION, PATCH_AUTO, PATCH_EXACT,
                       RESAMPLE, RESAMPLE_METHODS, RESAMPLE_STRATIFIED, is_exact_resample, is_score)

__all__ = ["METHOD_TITLES", "METHOD_ORDER", "STATUS_COLORS", "FAMILY_TITLES", "KIND_NAMES", "Column", "frame",
           "columns", "split_confirmation", "is_confirmation", "is_resample", "normalization", "fmt", "hover_text",
           "pos_sort_key", "pos_label", "colorbar_title", "as_float", "plotly_modules"]

_RESAMPLE_TAGS = {f"{base}:{m}": base for m in RESAMPLE_METHODS for base in (RESAMPLE, RESAMPLE_STRATIFIED)}

#: Default column titles per ``method`` value of ``to_dataframe()``.
METHOD_TITLES = {
    PATCH_EXACT: "Classic patching",
    PATCH_ATTRIBUTION: "Attribution patching",
    PATCH_AUTO: "Classic patching",
    RESAMPLE: "Resample AIE",
    RESAMPLE_STRATIFIED: "Resample AIE",
    **{tag: "Resample AIE" for tag in _RESAMPLE_TAGS},
    EB_ADJUSTED: "EB-AIE adjusted",
    EB_UNADJUSTED: "EB-AIE unadjusted",
}
#: The order of a result's columns, and of the report's: patching, the interventional AIE, then the EB-AIE
#: adjusted and unadjusted.
METHOD_ORDER = [PATCH_EXACT, PATCH_AUTO, PATCH_ATTRIBUTION, *_RESAMPLE_TAGS, RESAMPLE_STRATIFIED, RESAMPLE, EB_ADJUSTED,
                EB_UNADJUSTED]
#: Node kinds as column headers name them.
KIND_NAMES = {"head": "heads", "mlp": "MLP", "resid": "resid"}

#: Marker colour of each solver status in :func:`~.summaries.diagnostics`.
STATUS_COLORS = {"converged": "#1b9e77", "max_iter": "#e6ab02", "infeasible": "#d62728", "none": "#7f7f7f"}

FAMILY_TITLES = {"resid": "Residual stream", "head": "Attention heads", "mlp": "MLP"}


def plotly_modules():
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as err:  # pragma: no cover - plotly is a dependency
        raise ImportError("confounded_patching.plot requires plotly; install it with `pip install plotly`") from err
    return go, make_subplots


@dataclass
class Column:
    """One method's per-node values, as one heatmap column of :func:`compare`."""

    method: str
    title: str
    df: object  # pandas.DataFrame, one row per node
    tokens: list = field(default_factory=list)
    normalization: str | None = None
    metric: str | None = None

    subtitle: str = ""  # what kind of estimate: "interventional · topic-stratified", "observational" ...
    how: str = ""  # how it was computed: "first order: heads · exact: MLP, resid"
    exact: set = field(default_factory=set)  # labels of nodes whose value is an exact resample AIE (mixed columns)
    agreement: dict | None = None  # agreement with the exact AIE of this run (:func:`~.summaries.assess`)

    @property
    def is_score(self) -> bool:
        return is_score(self.method)

    @property
    def is_resample(self) -> bool:
        return is_resample(self.method)

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


def frame(result):
    """(long-form DataFrame, source object) of a result or a DataFrame, with the required columns checked."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        df = result
    elif hasattr(result, "to_dataframe"):
        df = result.to_dataframe()
    else:
        raise InputError("results must be PatchingResult, ResampleResult, MediationResult or their "
                         f"to_dataframe() tables; received {describe(result)}")
    missing = [c for c in LONG_FORM_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"a result table needs the columns {LONG_FORM_COLUMNS}; {type(result).__name__} lacks "
                         f"{missing}")
    df = df.copy()
    # object columns keep None (not NaN) for "no head" / "every position", also through concat
    df["head"] = pd.Series([_opt_int(h) for h in df["head"]], index=df.index, dtype=object)
    df["pos"] = pd.Series([_opt_int(p) for p in df["pos"]], index=df.index, dtype=object)
    df["layer"] = [int(v) for v in df["layer"]]
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    return df


def normalization(result, df) -> str:
    norm = getattr(result, "normalization", None)
    if isinstance(norm, str):
        return norm
    direction = df["direction"].iloc[0] if "direction" in df.columns and len(df) else "denoise"
    return "(patched − clean) / (clean − corrupt)" if direction == "noise" else "(patched − corrupt) / (clean − corrupt)"


def is_resample(tag: str) -> bool:
    """Whether a method tag is a resample (interventional) AIE, exact or first order."""
    return is_exact_resample(tag) or tag in _RESAMPLE_TAGS


def is_confirmation(obj) -> bool:
    """Whether ``obj`` is a :class:`~confounded_patching.interventions.confirm.Confirmation` (by its fields)."""
    return all(hasattr(obj, a) for a in ("exact", "estimate", "selected", "checked", "exact_se"))


def split_confirmation(results, confirmation=None):
    """(the results without Confirmations, the one Confirmation among them or ``confirmation``)."""
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    found = [r for r in results if is_confirmation(r)]
    if confirmation is not None:
        if not is_confirmation(confirmation):
            raise InputError(f"confirmation must be the Confirmation of cp.confirm(...); received "
                             f"{describe(confirmation)}")
        found.append(confirmation)
    if len(found) > 1:
        raise InputError(f"give at most one Confirmation (cp.confirm); received {len(found)}")
    return tuple(r for r in results if not is_confirmation(r)), (found[0] if found else None)


def _kinds(names) -> str:
    order = [k for k in ("head", "mlp", "resid") if k in names] + sorted(set(names) - set(KIND_NAMES))
    return ", ".join(KIND_NAMES.get(k, k) for k in order)


def _describe(col: Column, result) -> None:
    """The column's ``subtitle`` and ``how``, from its method tag and table."""
    df = col.df
    if col.is_score:
        direction = df["direction"].iloc[0] if "direction" in df.columns and len(df) else "denoise"
        n_pairs = int(df["n_pairs"].iloc[0]) if "n_pairs" in df.columns and len(df) else None
        col.subtitle = f"clean/corrupt pairs · {direction}" + (f" · {n_pairs} pairs" if n_pairs else "")
        col.how = "normalized score, exact patching" if col.method == PATCH_EXACT else "normalized score, first order"
        if col.method == PATCH_AUTO and "computed" in df.columns:
            by = {}
            for kind, how in zip(df["kind"], df["computed"]):
                by.setdefault(how, set()).add(kind)
            col.how = "normalized score, " + " + ".join(
                f"{'exact' if how == 'exact' else 'first order'} ({_kinds(kinds)})"
                for how, kinds in sorted(by.items(), key=lambda kv: kv[0] != "exact"))
    elif col.is_resample:
        stratified = col.method.startswith(RESAMPLE_STRATIFIED)
        col.subtitle = "interventional · " + ("topic-stratified" if stratified else "donors from all prompts")
        computed = (list(df["computed"]) if "computed" in df.columns
                    else ["exact" if is_exact_resample(col.method) else "attribution"] * len(df))
        by = {}
        for kind, how in zip(df["kind"], computed):
            by.setdefault(how, []).append(kind)
        if set(by) == {"exact"}:
            col.how = "exact resample"
        elif set(by) == {"attribution"}:
            col.how = "first order (every node)"
        else:
            col.how = " + ".join(f"{'exact' if how == 'exact' else 'first order'} ({_kinds(set(kinds))})"
                                 for how, kinds in sorted(by.items(), key=lambda kv: kv[0] != "attribution"))
            col.exact = {n for n, how in zip(df["node"], computed) if how == "exact"}
        n_pairs = int(df["n_pairs"].iloc[0]) if "n_pairs" in df.columns and len(df) else None
        if getattr(result, "all_donors", False):
            col.how += " · all donors"
        elif n_pairs:
            col.how += f" · {n_pairs} pairs"
    elif col.method == EB_ADJUSTED:
        col.subtitle = "observational (the paper's estimator)"
        col.how = "balances the confounder (topics)"
    elif col.method == EB_UNADJUSTED:
        col.subtitle = "observational (the paper's estimator)"
        col.how = "no confounder balanced"


def confirm_column(cols: list[Column], confirmation) -> Column:
    """Put a Confirmation's exact values into the column it checked; returns that column.

    Confirmed nodes keep their first-order value as ``estimate`` and are marked exact (outlined by
    :func:`~.heatmaps.compare`).
    """
    target = [c for c in cols if c.method == confirmation.checked]
    if not target:
        raise InputError(f"the Confirmation checks a {confirmation.checked!r} result, but no column is one (the "
                         f"columns are {[c.method for c in cols]}); pass the ResampleResult it confirmed")
    col = target[0]
    df = col.df.copy()
    index = {n: i for i, n in enumerate(df["node"])}
    if "estimate" not in df.columns:
        df["estimate"] = np.nan
    if "computed" not in df.columns:
        df["computed"] = "exact" if is_exact_resample(col.method) else "attribution"
    df["computed"] = df["computed"].astype(object)
    for node, exact, se, est in zip(confirmation.nodes, confirmation.exact, confirmation.exact_se,
                                    confirmation.estimate):
        i = index.get(node.label)
        if i is None:
            continue
        df.loc[i, "estimate"] = float(est)
        df.loc[i, "value"] = float(exact)
        if "se" in df.columns:
            df.loc[i, "se"] = float(se)
        df.loc[i, "computed"] = "exact (confirmation)"
        col.exact.add(node.label)
    col.df = df
    if confirmation.nodes:
        col.how += f" · {len(confirmation.nodes)} confirmed"
    return col


def columns(results, titles=None, confirmation=None) -> list[Column]:
    """Expand results into heatmap columns, one per method (a MediationResult gives two: adjusted, then unadjusted).

    A Confirmation (``cp.confirm``) among ``results``, or as ``confirmation``, is no column: its exact values
    replace the first-order ones of the column it checked, where they are marked exact.
    """
    results, confirmation = split_confirmation(tuple(results), confirmation)
    if not results:
        raise InputError("give at least one result, e.g. compare(classic, med)")
    cols: list[Column] = []
    for result in results:
        df = frame(result)
        methods = list(dict.fromkeys(df["method"]))
        methods.sort(key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
        tokens = list(getattr(result, "tokens", None) or [])
        for method in methods:
            sub = df[df["method"] == method].reset_index(drop=True)
            metric = str(sub["metric"].iloc[0]) if "metric" in sub.columns and len(sub) else None
            col = Column(method=method, title=METHOD_TITLES.get(method, method), df=sub, tokens=tokens,
                          metric=metric)
            if col.is_score:
                col.normalization = normalization(result, sub)
                if "direction" in sub.columns and method in (PATCH_EXACT, PATCH_AUTO):
                    col.title = f"{col.title} ({sub['direction'].iloc[0]})"
            _describe(col, result)
            cols.append(col)
    if confirmation is not None:
        confirm_column(cols, confirmation)
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


def fmt(v, digits: int = 3) -> str:
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


def hover_text(row, title: str) -> str:
    """Hover text of one node: label, value, interval and diagnostics."""
    get = lambda k: row[k] if k in row and row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k])) else None
    lines = [f"<b>{row['node']}</b>  ({title})", f"value: {fmt(row['value'])}"]
    if get("ci_low") is not None and get("ci_high") is not None:
        lines.append(f"95% interval: [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]")
    if get("se") is not None:
        lines.append(f"se: {fmt(row['se'])}")
    if get("computed") is not None:
        how = {"attribution": "first order"}.get(row["computed"], row["computed"])
        lines.append(f"computed: {how}" + (f" (first-order estimate {fmt(row['estimate'])})"
                                           if get("estimate") is not None else ""))
    diag = [f"{name} {fmt(row[k])}" for k, name in (("ess", "ESS"), ("gamma", "γ"), ("imbalance", "imbalance"))
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
    if get("detectable") is not None:
        lines.append(f"smallest AIE any estimator could tell from 0 here: {fmt(row['detectable'])}")
    if get("reason"):
        lines.append(f"not reliable: {row['reason']}")
    return "<br>".join(lines)


def pos_sort_key(p):
    if p is None:
        return (2, 0)
    return (0, p) if p >= 0 else (1, p)


def pos_label(pos, tokens) -> str:
    """``tok_i`` label of a position from the first prompt's token labels (plus ``pos -k``), else ``pos -k``."""
    if pos is None:
        return "all positions"
    if tokens and -len(tokens) <= pos < len(tokens):
        # negative positions align from the end of each prompt: the token is the first prompt's, so say both
        return str(tokens[pos]) if pos >= 0 else f"{tokens[pos]}<br>pos {pos}"
    return f"pos {pos}"


def colorbar_title(col: Column) -> str:
    if col.is_score:
        norm = col.normalization or ""
        if norm.startswith("(patched − clean)"):
            sign = "0 = unharmed · −1 (red) = effect destroyed"
        else:
            sign = "1 (blue) = recovers clean · 0 = corrupt"
        return f"score = {norm}<br>{sign}"
    metric = col.metric or "y"
    return f"AIE, units of y = {metric}<br>blue > 0: resampling the node raises y"


def as_float(series) -> np.ndarray:
    """A column as floats (NaN where not a number)."""
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").astype(float).to_numpy()
