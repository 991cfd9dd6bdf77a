"""Plotly figures of per-node effects: heatmaps side by side, localization, diagnostics, agreement.

Every function takes results (``PatchingResult``, ``ResampleResult``,
``MediationResult``), or their long-form ``to_dataframe()`` tables, and
returns a ``plotly.graph_objects.Figure``. plotly is imported inside the
functions, so ``import confounded_patching`` never loads it. Modules:
:mod:`.frames` (results → columns, labels, hover), :mod:`.heatmaps`
(:func:`compare`), :mod:`.summaries` (the other figures and :func:`save`).

- :func:`compare` — one column per method (headers say what each is and how
  far it agrees with the exact AIE; exact cells outlined), one row per node family
  (residual stream: layer × position; attention heads: layer × head, one
  row per head position; MLPs: a layer strip), the field's conventions
  (layer 0 at the top, ``RdBu`` centred at 0, sign and normalization in
  the colourbar title). Colour ranges are shared within a row among the
  columns that have the same units (see :func:`compare`).
- :func:`localization` — per-node |AIE| sorted by magnitude, unadjusted
  versus adjusted, and the share of the total |AIE| held by the top 10% of
  nodes (Fotouhi et al. 2024, Figure 2).
- :func:`diagnostics` — the EB-AIE's diagnostics per node, grouped by layer,
  with the thresholds of the ``reliable`` flag drawn.
- :func:`agreement` — two methods' node scores against each other, with
  Spearman and Pearson correlations.
- :func:`assess` — each column's agreement with the exact (interventional)
  AIE of the run, with a verdict (trust / caution / do not trust).
- :func:`save` — self-contained HTML (plotly.js embedded, works offline) or
  PNG (needs kaleido and a Chrome/Chromium); :func:`show` — plotly's
  renderer in a notebook, the system's browser in a plain script.

Example::

    >>> fig = cp.plot.compare(classic, aie, med, confirmation=check)   # classic | AIE | EB adjusted | unadjusted
    >>> cp.plot.show(fig)                         # notebook: inline; script: opens a browser
    >>> cp.plot.save(fig, "compare.html")         # offline, self-contained
"""

from .frames import METHOD_TITLES as METHOD_TITLES
from .frames import STATUS_COLORS as STATUS_COLORS
from .heatmaps import compare as compare
from . import frames as frames
from . import heatmaps as heatmaps
from . import summaries as summaries
from .summaries import agreement as agreement
from .summaries import assess as assess
from .summaries import correlations as correlations
from .summaries import diagnostics as diagnostics
from .summaries import localization as localization
from .summaries import save as save
from .summaries import show as show
from .summaries import top_share as top_share

__all__ = ["compare", "localization", "diagnostics", "agreement", "assess", "save", "show", "top_share",
           "correlations", "METHOD_TITLES", "STATUS_COLORS"]
