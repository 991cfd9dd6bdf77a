"""The deconfounded average indirect effect (AIE) of a node, estimated with entropy balancing.

Method (Fotouhi et al., "Removing spurious correlation from neural network
interpretations", arXiv 2412.02893, Eq. 2; the cross-world weight of Hsu,
Huber, Lee & Lettry 2020). For prompts ``i`` with query coordinates ``q_i``,
node coordinates ``n_i``, confounder ``x_i`` and outcome ``y_i``, and ``K``
random partners ``j != i`` per prompt::

    log R^nx_ij = s_nx(q_i, z_i) - s_nx(q_j, z_i),      z = [n, x]
    log R^x_ij  = s_x(q_j, x_i) - s_x(q_i, x_i)
    w_ij        = pi_x,i * R^nx_ij * R^x_ij                       (Eq. 2's weight)
    AIE (HT)    = mean_i mean_j (w_ij - pi_x,i) y_i               (the paper's form)
    AIE (Hajek) = sum_ij w_ij y_i / sum_ij w_ij - sum_i pi_x,i y_i / sum_i pi_x,i   (default)

where ``s = -lam^T g`` are the log-linear scores of entropy-balancing weights
(Hainmueller 2012; approximate balance, Wang & Zubizarreta 2020) on
``g(q, z) = [q, q^2 - c, z, q outer z]`` and ``pi_x = m softmax(s_x)``. The
pair weight equals ``f(q_i) f(q_j | n_i, x_i) / (f(q_i | n_i, x_i) f(q_j |
x_i))`` when the scores are log density ratios, so it reweights prompt ``i``
to ``E[Y(q, N(q'))]`` for independent ``q, q'`` and the AIE is ``E[Y(q,
N(q'))] - E[Y(q, N(q))]`` with the topic held out of the query's path. It
is zero for every outcome additive in ``q`` and ``n``: it measures ``q x n``
non-additivity (see ``docs/estimator.md``).

Defaults, each chosen by measurement against planted truth
(``docs/estimator.md``, ``benchmarks/studies/accuracy.py``): Eq. (2); the squares of
``q`` in ``g``; the Hajek form, calibrated so that outcomes additive in
``(q, n, x)`` get AIE 0; no winsorizing (``winsorize=0.05`` gives the
paper's clipping of ``T`` at the 5th/95th percentiles, which shrinks the
estimate); ``gamma="auto"`` (:func:`~.gamma_rule.select_gamma`).

Variants: ``variant="algorithm1"`` reproduces the paper's Algorithm 1, line
9, ``R^nx * pi_x,i * (R^x - 1) * y_i``, which is not Eq. (2) and is
inconsistent (its weight averages to ``int f(q)^2 / f(q|x) dq >= 1``);
``weights="parametric"`` uses the Gaussian models of the paper's Appendix
A; ``confounder=None`` gives the unadjusted ("normal") estimator with
``pi_x = 1`` and ``z = n``.

The tolerance ``gamma`` of approximate balance on the product columns decides
everything: at ``gamma >= gamma_max`` the node's weights are uniform and the
AIE is (nearly) 0; too small and the ratios explode or the problem is
infeasible. The node model's topic products ``q outer x`` always get
``pi_x``'s tolerance, so that ``R^nx`` can cancel ``R^x``.

Modules: :mod:`~.balancer` (the EB solver), :mod:`~.ratio_models`,
:mod:`~.gamma_rule` (``gamma="auto"``), :mod:`~.partners` (pairs, HT / Hajek
statistics, calibration), :mod:`~.outcome_model`, :mod:`~.linalg` (PCA) and
:mod:`~.confounders` (topics); :mod:`~.engine` runs them over chunks of
nodes, with the settings of :class:`~.options.AIEOptions`. This module checks
the inputs and assembles the results (:mod:`~.aie_table`).

Example::

    >>> r = aie(query, node, y, topics)            # query [m, 768], node [m, 576], y [m], topics [m]
    >>> r.value, (r.ci_low, r.ci_high), r.gamma, r.ess, r.status
    >>> table = aie_many(query, acts, y, topics)   # acts [n_nodes, m, d]
    >>> table.to_dataframe()                       # one row per node
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch

from ..errors import InputError, describe
from ..validation import as_matrix
from . import engine
from .aie_table import AIEResult, AIETable, warn_unreliable
from .confounders import confounder_features
from .detectable import detectable_effect, outcome_noise
from .gamma_rule import GammaRule
from .node_coords import coords, node_source
from .options import AIEOptions
from .partners import check_partners, pair_index
from .reliability import UNIDENTIFIED, ReliabilityRule, assess, unidentified

__all__ = ["aie", "aie_many", "aie_tables", "outcome_columns",
           "check_prompt_count", "AIEResult", "AIETable", "AUGMENT_PROMPTS_PER_COLUMN"]

#: ``augment="auto"`` fits the outcome model only with at least this many prompts per column of it
#: (chosen on the planted-truth family, ``docs/estimator.md``: with fewer, the fitted products add more
#: error than the residual imbalance they correct, e.g. on topic-only nodes at d = 25, m <= 1000).
AUGMENT_PROMPTS_PER_COLUMN = 10


# ----------------------------------------------------------------------------- public API


def aie_many(query, nodes, outcome, confounder=None, *, K: int = 200, gamma="auto", gamma_x="auto",
             variant: str = "eq2", estimator: str = "hajek", weights: str = "eb", features: str = "squares",
             d_q: int = 25, d_n: int = 25, winsorize: float | None = None, n_boot: int = 200, ci: float = 0.95,
             pairs=None, seed: int = 0, confounder_kind: str = "auto", calibrate="auto", chunk_size: int = 64,
             dtype=torch.float32, tol: float | None = None, max_iter: int | None = None,
             gamma_rule: GammaRule | None = None, device=None, augment="auto",
             reliability: ReliabilityRule | None = None) -> AIETable:
    """AIE of every node, with the EB problems solved batched across nodes.

    Args:
        query: query embeddings ``[m, D_q]`` (PCA to ``d_q`` if wider).
        nodes: activations ``[n_nodes, m, D]``, a list of ``[m, D_i]``
            (each PCA'd to ``d_n`` if wider), or an
            :class:`~confounded_patching.activations.store.ActivationStore` (or ``store.select(nodes)``) on
            disk: then each chunk of nodes is read from the shards and
            reduced to ``d_n`` components on its own, so the activations are
            never in memory all at once (:mod:`~.node_coords`); the result equals
            that of the same activations in memory.
        outcome: ``[m]`` binary labels or a continuous metric.
        confounder: topic labels ``[m]`` (str/int), covariates ``[m, k]``, or
            ``None`` for the unadjusted estimator.
        K: partners per prompt (the same ``pairs`` for every node).
        gamma: tolerance on the node models' products ``q outer n``:
            ``"auto"`` (:func:`~.gamma_rule.select_gamma`) or a number (in
            correlation units; the products ``q outer x`` get ``gamma_x``).
        gamma_x: the same for ``pi_x`` (``"auto"``:
            :func:`~.gamma_rule.select_gamma_x`).
        variant: ``"eq2"`` (default) or ``"algorithm1"`` (the paper's printed
            Algorithm 1, inconsistent; for reproduction only; HT only).
        estimator: ``"hajek"`` (self-normalised, default) or ``"ht"`` (mean of
            the terms, the paper's form; not invariant to shifting ``y``).
        weights: ``"eb"`` or ``"parametric"`` (Appendix A Gaussian models).
        features: ``"squares"`` (``[q, q^2, z, q z]``, default) or ``"paper"``
            (``[q, z, q z]``).
        d_q, d_n: principal components kept of the query and of each node.
        winsorize: clip at the ``p`` and ``1 - p`` quantiles (HT: the terms
            ``T_ij`` of prompts with ``y_i != 0``; Hajek: the pair
            log-weights); ``None`` (default) or 0 to disable; ``0.05`` is the
            paper's choice.
        calibrate: tilt the Hajek weights so that outcomes additive in
            ``(q, n, x)`` get AIE 0 (``"auto"``: on for Hajek; HT has none).
        confounder_kind: ``"auto"``, ``"labels"`` or ``"covariates"``.
        n_boot, ci: bootstrap over prompts and interval level. The weights
            are held fixed, so the interval reflects the pair terms' sampling
            variability, not the weight models' or the regularisation bias.
        pairs: ``[m, K]`` partner indices (see :func:`pair_index`); drawn from
            ``seed`` if omitted.
        chunk_size: nodes solved together, of every kind (nodes are taken
            in order of coordinate width, so 64-wide heads and 576-wide MLP
            outputs reduced to ``d_n`` share chunks; results come back in
            input order). Memory grows with ``chunk_size * m * (d_n + k)``
            for the coordinates and the solver; pair sums, PCA and outcome
            models run in small blocks (:func:`~.linalg.block_rows`).
        dtype: solver precision (float32 default here; AIE sums are float64).
        device: where the entropy-balancing solves run: None or ``"cpu"``
            (default), ``"cuda"``, ``"cuda:N"``; a GPU torch does not see is an
            :class:`InputError`. Off the CPU every solution is re-checked in
            float64 on the CPU and its status set from that check
            (:class:`~.balancer.EntropyBalancer` ``verify``); PCA, pairs and
            statistics stay on the CPU.
        tol: KKT tolerance of the solver, in correlation units (default ``1e-4``;
            the sampling noise of a correlation at m = 1000 is about 0.03).
        max_iter: Newton steps of each entropy-balancing solve (None: the
            solver's default, 200; path points after the first get
            ``gamma_rule.step_max_iter``).
        gamma_rule: knobs of the ``"auto"`` rule.
        augment: add the outcome-model term of the augmented (doubly robust)
            estimator (:mod:`~.outcome_model`: a ridge regression of ``y`` on
            ``[q, q^2, n, n^2, x, q n, q x]``, a light fixed penalty on the
            products only), which corrects
            the bias left by approximate balance (``"auto"``: on for Hajek when
            there are at least :data:`AUGMENT_PROMPTS_PER_COLUMN` = 10 prompts per
            column of the outcome model, :func:`outcome_columns`, e.g. m >= 570
            at d_q = d_n = 5 and m >= 8,550 at 25; the HT forms reproduce the paper
            and have none).
        reliability: thresholds of the per-node ``reliable`` flag
            (:class:`~.reliability.ReliabilityRule`; None: the calibrated defaults).

    Returns:
        :class:`AIETable`, one entry per node in input order, with ``reliable`` and ``reason`` per node.
        Nodes whose AIE the data cannot identify (a constant query or node, a node that is a linear
        function of the query) get ``nan``, status ``"unidentified"`` and the reason, with a warning.
    """
    options = AIEOptions.from_arguments(locals())
    return aie_tables(query, nodes, outcome, [confounder], options, stacklevel=2)[0]


def aie(query, node, outcome, confounder=None, *, K: int = 200, gamma="auto", gamma_x="auto",
        variant: str = "eq2", estimator: str = "hajek", weights: str = "eb", features: str = "squares",
        d_q: int = 25, d_n: int = 25, winsorize: float | None = None, n_boot: int = 200, ci: float = 0.95,
        pairs=None, seed: int = 0, confounder_kind: str = "auto", calibrate="auto", dtype=torch.float64,
        tol: float | None = None, max_iter: int | None = None, gamma_rule: GammaRule | None = None,
        device=None, augment="auto", reliability: ReliabilityRule | None = None) -> AIEResult:
    """AIE of one node (:func:`aie_many` on ``[node]``, solved in float64 by default).

    Args:
        query: query embeddings ``[m, D_q]``; node: the node's activations
            ``[m, D_n]``; outcome: ``[m]``; confounder: topic labels ``[m]``,
            covariates ``[m, k]`` or ``None`` (unadjusted). The other
            arguments, ``device`` included, are those of :func:`aie_many`.

    Returns:
        :class:`AIEResult`.

    Example::

        >>> r = aie(query, node, y, topics)        # [m, 768], [m, 576], [m], [m]
        >>> r.value, r.ci_low, r.ci_high, r.gamma, r.status
    """
    if isinstance(node, (list, tuple)) or getattr(node, "ndim", 2) not in (1, 2):
        raise InputError(f"node must be one node's activations [prompts, dims]; received {describe(node)}. "
                         "Use aie_many for several nodes")
    options = AIEOptions.from_arguments(locals())
    return aie_tables(query, [node], outcome, [confounder], options, stacklevel=2)[0][0]


def aie_tables(query, nodes, outcome, confounders: list, options: AIEOptions, *, progress: bool = False,
               stacklevel: int = 1) -> list:
    """:func:`aie_many` for several confounders at once (e.g. ``[topics, None]``: adjusted and unadjusted).

    Every estimator shares the pairs, the bootstrap draws and one pass over the nodes: each chunk's
    coordinates are computed (or streamed from a store) once and used by all of them. ``progress``
    shows a bar over the nodes; ``stacklevel`` says whose code warnings point at (1: the caller).
    Returns one :class:`AIETable` per entry of ``confounders``.
    """
    opts = options.resolved()
    y, y_scale = _outcome(outcome)
    m = y.shape[0]
    qraw = as_matrix("query", query, m)
    source = node_source(nodes, m)
    for c in confounders:
        _warn_float_labels(c, opts.confounder_kind, stacklevel + 1)
    xs = [confounder_features(c, m, kind=opts.confounder_kind)[0] for c in confounders]
    kmax = max((0 if x is None else x.shape[1]) for x in xs)
    d_q, d_n = min(opts.d_q, qraw.shape[1]), min(opts.d_n, max(source.widths))
    check_prompt_count(m, d_q, d_n + kmax)
    if options.augment == "auto" and opts.augment and m < AUGMENT_PROMPTS_PER_COLUMN * outcome_columns(d_q, d_n, kmax):
        opts = dataclasses.replace(opts, augment=False)  # too few prompts for the outcome model's columns

    q64 = coords(qraw, opts.d_q, opts.seed)
    q = q64.to(opts.dtype)
    J = check_partners(opts.pairs, m) if opts.pairs is not None else torch.from_numpy(pair_index(m, opts.K, opts.seed))
    counts = torch.from_numpy(np.random.default_rng([opts.seed, 1]).multinomial(
        m, np.full(m, 1.0 / m), size=opts.n_boot)).to(torch.float64)
    # HT terms vanish where y_i = 0, so only those prompts need pairs (linear time for rare binary labels)
    rows = torch.arange(m) if opts.estimator == "hajek" else torch.nonzero(y != 0).flatten()
    settings = [engine.setting(c, x, q, q64, J, rows, opts, stacklevel + 1) for c, x in zip(confounders, xs)]
    results = engine.run(settings, source, q, q64, y, J, counts, opts, progress)
    query_constant = bool(q64.abs().amax() == 0)
    tables = [_table(st, res, m, J, opts, query_constant, y_scale, outcome_noise(y, q64, st.x))
              for st, res in zip(settings, results)]
    for table in tables:
        warn_unreliable(table, stacklevel=stacklevel + 1)
    return tables


# ----------------------------------------------------------------------------- helpers


#: outcomes whose largest |entry| lies outside ``[2**-OUTCOME_RANGE, 2**OUTCOME_RANGE]`` are estimated divided by
#: a power of 2 (exact) and the estimates multiplied back, so that sums of squares (the bootstrap se) stay finite
OUTCOME_RANGE = 64


def _outcome(y) -> tuple[torch.Tensor, float]:
    """The outcome as a float64 vector, and the power of 2 it was divided by (1.0 unless near the float64 limits).

    The AIE is linear in the outcome, so ``aie(q, n, c * y)`` is ``c`` times ``aie(q, n, y)`` at any scale.
    """
    t = as_matrix("outcome", y)
    if t.shape[1] != 1:
        raise InputError(f"outcome must be a vector [prompts]; received {describe(y)}")
    t = t[:, 0]
    top = float(t.abs().max()) if t.shape[0] else 0.0
    if t.shape[0] < 2 or float(t.max() - t.min()) <= 1e-12 * top:
        raise InputError(f"outcome must vary across prompts; received a constant vector of length {t.shape[0]}")
    scale = 1.0
    if not 2.0 ** -OUTCOME_RANGE <= top <= 2.0 ** OUTCOME_RANGE:
        scale = 2.0 ** round(math.log2(top))
        t = t / scale
    return t, scale


#: a float confounder vector of whole numbers with at most this many distinct values looks like topic labels
LABEL_LIKE_VALUES = 20


def _warn_float_labels(confounder, kind: str, stacklevel: int) -> None:
    """Warn when ``confounder`` is a float vector of a few whole numbers read as one covariate (``kind="auto"``):
    topic ids cast to float (``topics.astype(float)``) would otherwise be balanced as a number, silently."""
    if kind != "auto" or confounder is None:
        return
    arr = confounder.detach().cpu().numpy() if isinstance(confounder, torch.Tensor) else np.asarray(confounder)
    if arr.ndim != 1 or arr.dtype.kind != "f" or not np.isfinite(arr).all():
        return
    values = np.unique(arr)
    if len(values) <= min(LABEL_LIKE_VALUES, len(arr) // 2) and bool((values == np.round(values)).all()):
        warnings.warn(f"confounder is a float vector holding only {len(values)} whole numbers "
                      f"({', '.join(f'{v:g}' for v in values[:5])}{' ...' if len(values) > 5 else ''}): it is read as "
                      "one continuous covariate, not as topic labels. Pass integer or string labels, or "
                      "confounder_kind='labels' (or 'covariates' to keep this reading and silence this warning)",
                      stacklevel=stacklevel + 1)


def outcome_columns(d_q: int, d_n: int, k: int) -> int:
    """Columns of the augmented estimator's outcome model: ``[q, q^2, n, n^2, q n, x, q x]``."""
    return 2 * d_q + 2 * d_n + d_q * d_n + k + d_q * k


def check_prompt_count(m: int, d_q: int, d_z: int) -> None:
    """Raise unless ``m`` prompts are enough for ``d_q`` query and ``d_z`` node + confounder dimensions."""
    need = 2 * (2 * d_q + d_z) + 10
    if m < need:
        raise InputError(f"need at least 2 * (2 d_q + d_z) + 10 = {need} prompts for d_q = {d_q} query and d_z = "
                         f"{d_z} node/confounder dims; received {m} prompts. Lower d_q / d_n or add prompts")


def _table(st: engine.Setting, res: list, m: int, J, opts: AIEOptions, query_constant: bool = False,
           y_scale: float = 1.0, sigma: float = float("nan")) -> AIETable:
    """Assemble the per-node results (in input order) into an :class:`AIETable`, with the identifiability
    guards, the smallest detectable effect (:mod:`~.detectable`; ``sigma``: the outcome's residual sd, on the
    scale of ``outcome / y_scale``) and the reliable flag (:mod:`~.reliability`)."""
    keys = ("value", "boot", "winsorized", "gamma", "ess", "imbalance", "pair_ess", "gamma_max", "gamma_noise",
            "query_corr", "information", "constant")
    cat = {k: torch.stack([r[k] for r in res]).numpy() for k in keys}
    status = [r["status"] for r in res]
    why = unidentified(query_constant, cat["constant"], cat["query_corr"])
    for i, reason in enumerate(why):
        if reason:
            cat["value"][i] = np.nan
            cat["boot"][i] = np.nan
            status[i] = UNIDENTIFIED
    value = cat["value"]
    n_boot = opts.n_boot
    boot = cat["boot"] if n_boot else np.zeros((len(value), 0))
    alpha = (1 - opts.ci) / 2
    if n_boot:
        lo, hi, se = np.quantile(boot, alpha, axis=1), np.quantile(boot, 1 - alpha, axis=1), boot.std(1, ddof=1)
    else:
        lo = hi = se = np.full(len(value), np.nan)
    nan_rows = np.isnan(value)
    lo, hi, se = (np.where(nan_rows, np.nan, a) for a in (lo, hi, se))
    detectable = detectable_effect(cat["information"], sigma, m).numpy()
    detectable[cat["constant"].astype(bool) | query_constant] = np.nan  # nothing to swap or to reweight: no floor
    if y_scale != 1.0:  # estimated on outcome / y_scale (a power of 2): scale back
        value, boot, lo, hi, se, detectable = (a * y_scale for a in (value, boot, lo, hi, se, detectable))
    gx, ess_x, imb_x, status_x = st.diag_x
    reliable, reason = assess(status, cat["query_corr"], cat["pair_ess"], ess_x, m, st.adjusted, opts.reliability,
                              prior=why, status_x=status_x, detectable=detectable)
    reliable &= np.isfinite(value)
    reason = [r or ("no estimate" if not ok else "") for r, ok in zip(reason, reliable)]
    return AIETable(
        value=value, ci_low=lo, ci_high=hi, se=se, gamma=cat["gamma"], ess=cat["ess"], pair_ess=cat["pair_ess"],
        imbalance=cat["imbalance"], status=status, winsorized=cat["winsorized"],
        gamma_max=cat["gamma_max"], gamma_noise=cat["gamma_noise"], boot=boot,
        gamma_x=gx, ess_x=ess_x, imbalance_x=imb_x, status_x=status_x,
        n=m, K=int(J.shape[1]), variant=opts.variant, estimator=opts.estimator, weights=opts.weights,
        features="squares" if opts.squares else "paper", adjusted=st.adjusted, winsorize=float(opts.winsorize or 0.0),
        calibrated=bool(opts.calibrate), augmented=bool(opts.augment),
        gamma_rule=opts.gamma_rule.to_dict() if "auto" in (opts.gamma, opts.gamma_x) else {},
        query_corr=cat["query_corr"], detectable=detectable, reliable=reliable, reason=reason,
        reliability=opts.reliability.to_dict())
