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
(``docs/estimator.md``, ``benchmarks/accuracy.py``): Eq. (2); the squares of
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

Modules: ``balancing`` (the EB solver), ``weighting`` (ratio models),
``gamma_rule`` (``gamma="auto"``), ``pairs`` (pairs, HT / Hajek statistics,
calibration), ``topics`` (PCA, topics); this module validates inputs and
assembles the results.

Example::

    >>> r = aie(query, node, y, topics)            # query [m, 768], node [m, 576], y [m], topics [m]
    >>> r.value, (r.ci_low, r.ci_high), r.gamma, r.ess, r.status
    >>> table = aie_many(query, acts, y, topics)   # acts [n_nodes, m, d]
    >>> table.to_dataframe()                       # one row per node
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .blocks import BLOCK_FLOATS, block_rows
from .errors import InputError, describe
from .gamma_rule import GammaRule, _prod_gamma, select_gamma, select_gamma_x
from .progress import progress_counter
from .pairs import _check_pairs, _Pairs, _stats_hajek, _stats_ht, pair_index
from .coords import _coords, _matrix, node_source
from .outcome_model import fit_outcomes, partner_means
from .devices import resolve_device
from .results import Result
from .topics import _standardize, confounder_features
from .weighting import fit_eb, fit_gaussian, fit_topic_gaussian, gamma_max_products

__all__ = ["aie", "aie_many", "AIEResult", "AIETable", "pair_index", "select_gamma", "GammaRule"]

VARIANTS = ("eq2", "algorithm1")
ESTIMATORS = ("ht", "hajek")
WEIGHTS = ("eb", "parametric")
FEATURES = ("squares", "paper")


# ----------------------------------------------------------------------------- results


_PER_NODE = ("value", "ci_low", "ci_high", "se", "gamma", "gamma_max", "gamma_noise", "ess", "pair_ess", "imbalance",
             "winsorized")
_SHARED = ("gamma_x", "ess_x", "imbalance_x", "status_x", "n", "K", "variant", "estimator", "weights", "features",
           "adjusted", "winsorize", "calibrated", "augmented")


@dataclass(frozen=True)
class AIEResult(Result):
    """The AIE of one node, with its interval and diagnostics.

    Attributes:
        value: AIE estimate, in units of the outcome (``nan`` when a weight
            model is infeasible).
        ci_low, ci_high: bootstrap percentile interval over prompts (weights
            held fixed, the same resampled prompts for every node).
        se: bootstrap standard deviation.
        gamma: tolerance on the node's product columns ``q outer n``
            (``nan`` for parametric weights).
        gamma_max: largest |mean| of those columns under uniform weights
            (above it the node's model is uniform).
        gamma_noise: their noise level (``nan`` unless ``gamma="auto"``).
        ess: effective sample size ``(sum pi)^2 / sum pi^2`` of the node's
            weights ``pi_nx`` (out of ``n``).
        pair_ess: effective sample size of the pair weights ``w_ij`` as a
            share of ``n K``.
        imbalance: ``||G^T w||_inf`` of the node's weights.
        status: solver status of the node's weights: ``converged``,
            ``max_iter`` or ``infeasible``.
        winsorized: share of terms clipped by the winsorization.
        gamma_x, ess_x, imbalance_x, status_x: the same for ``pi_x`` (``nan``
            / ``"none"`` when unadjusted).
        n: prompts; K: partners per prompt.
        variant, estimator, weights, features, winsorize: the settings used.
        adjusted: whether a confounder was balanced.
        calibrated, augmented: whether the Hajek totals were calibrated and
            the outcome-model augmentation added.
    """

    value: float
    ci_low: float
    ci_high: float
    se: float
    gamma: float
    gamma_max: float
    gamma_noise: float
    ess: float
    pair_ess: float
    imbalance: float
    status: str
    winsorized: float
    gamma_x: float
    ess_x: float
    imbalance_x: float
    status_x: str
    n: int
    K: int
    variant: str
    estimator: str
    weights: str
    features: str
    adjusted: bool
    winsorize: float = 0.0
    calibrated: bool = False
    augmented: bool = False
    kind: str = "aie"


@dataclass(frozen=True)
class AIETable(Result):
    """AIEs of many nodes: entry ``i`` of every per-node field belongs to node ``i``.

    Per-node fields (numpy arrays, ``status`` a list) are those of
    :class:`AIEResult`: ``value``, ``ci_low``, ``ci_high``, ``se``,
    ``gamma``, ``gamma_max``, ``gamma_noise``, ``ess``, ``pair_ess``,
    ``imbalance``, ``status``, ``winsorized``. ``boot`` holds the bootstrap
    replicates ``[n_nodes, n_boot]``, computed from the same resampled
    prompts for every node, so contrasts between nodes can be bootstrapped
    too. The other fields are shared. ``table[i]`` is node ``i``'s
    :class:`AIEResult`; ``to_dataframe()`` gives one row per node.
    """

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    se: np.ndarray
    gamma: np.ndarray
    gamma_max: np.ndarray
    gamma_noise: np.ndarray
    ess: np.ndarray
    pair_ess: np.ndarray
    imbalance: np.ndarray
    status: list
    winsorized: np.ndarray
    boot: np.ndarray
    gamma_x: float
    ess_x: float
    imbalance_x: float
    status_x: str
    n: int
    K: int
    variant: str
    estimator: str
    weights: str
    features: str
    adjusted: bool
    winsorize: float = 0.0
    calibrated: bool = False
    augmented: bool = False
    gamma_rule: dict = field(default_factory=dict)
    kind: str = "aie_table"

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, i: int) -> AIEResult:
        i = range(len(self))[i]
        per = {k: float(getattr(self, k)[i]) for k in _PER_NODE}
        shared = {k: getattr(self, k) for k in _SHARED}
        return AIEResult(status=self.status[i], **per, **shared)

    def to_dataframe(self, nodes: Sequence | None = None):
        """Long-form table, one row per node (``node`` column from ``nodes`` if given, else 0..n-1)."""
        import pandas as pd

        if nodes is not None and len(nodes) != len(self):
            raise InputError(f"nodes must have one entry per row ({len(self)}); received {describe(nodes)}")
        df = pd.DataFrame({k: getattr(self, k) for k in _PER_NODE})
        df.insert(len(df.columns), "status", self.status)
        df.insert(0, "node", [str(n) for n in nodes] if nodes is not None else np.arange(len(self)))
        for k in _SHARED:
            df[k] = getattr(self, k)
        return df


# ----------------------------------------------------------------------------- inputs


def _choice(name: str, value, options) -> str:
    if value not in options:
        raise InputError(f"{name} must be one of {set(options)}; received {value!r}")
    return value


def _outcome(y) -> torch.Tensor:
    t = _matrix("outcome", y)
    if t.shape[1] != 1:
        raise InputError(f"outcome must be a vector [prompts]; received {describe(y)}")
    t = t[:, 0]
    if t.shape[0] < 2 or float(t.max() - t.min()) <= 1e-12 * (1 + float(t.abs().max())):
        raise InputError(f"outcome must vary across prompts; received a constant vector of length {t.shape[0]}")
    return t


def _check_size(m: int, d_q: int, d_z: int):
    need = 2 * (2 * d_q + d_z) + 10
    if m < need:
        raise InputError(f"need at least 2 * (2 d_q + d_z) + 10 = {need} prompts for d_q = {d_q} query and d_z = "
                         f"{d_z} node/confounder dims; received {m} prompts. Lower d_q / d_n or add prompts")


# ----------------------------------------------------------------------------- public API


def aie_many(query, nodes, outcome, confounder=None, *, K: int = 200, gamma="auto", gamma_x="auto",
             variant: str = "eq2", estimator: str = "hajek", weights: str = "eb", features: str = "squares",
             d_q: int = 25, d_n: int = 25, winsorize: float | None = None, n_boot: int = 200, ci: float = 0.95,
             pairs=None, seed: int = 0, confounder_kind: str = "auto", calibrate="auto", chunk_size: int = 64,
             dtype=torch.float32, tol: float | None = None, max_iter: int | None = None,
             gamma_rule: GammaRule | None = None, device=None, augment="auto") -> AIETable:
    """AIE of every node, with the EB problems solved batched across nodes.

    Args:
        query: query embeddings ``[m, D_q]`` (PCA to ``d_q`` if wider).
        nodes: activations ``[n_nodes, m, D]``, a list of ``[m, D_i]``
            (each PCA'd to ``d_n`` if wider), or an
            :class:`~.store.ActivationStore` (or ``store.select(nodes)``) on
            disk: then each chunk of nodes is read from the shards and
            reduced to ``d_n`` components on its own, so the activations are
            never in memory all at once (:mod:`~.coords`); the result equals
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
            models run in small blocks (:mod:`~.blocks`).
        dtype: solver precision (float32 default here; AIE sums are float64).
        device: where the entropy-balancing solves run: None or ``"cpu"``
            (default), ``"cuda"``, ``"cuda:N"``; a GPU torch does not see is an
            :class:`InputError`. Off the CPU every solution is re-checked in
            float64 on the CPU and its status set from that check
            (:class:`~.balancing.EntropyBalancer` ``verify``); PCA, pairs and
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
            the bias left by approximate balance (``"auto"``: on for Hajek;
            the HT forms reproduce the paper and have none).

    Returns:
        :class:`AIETable`, one entry per node in input order.
    """
    return _aie_tables(query, nodes, outcome, [confounder], K=K, gamma=gamma, gamma_x=gamma_x, variant=variant,
                       estimator=estimator, weights=weights, features=features, d_q=d_q, d_n=d_n,
                       winsorize=winsorize, n_boot=n_boot, ci=ci, pairs=pairs, seed=seed,
                       confounder_kind=confounder_kind, calibrate=calibrate, chunk_size=chunk_size, dtype=dtype,
                       tol=tol, max_iter=max_iter, gamma_rule=gamma_rule, device=device, augment=augment,
                       _stacklevel=4)[0]


def _aie_tables(query, nodes, outcome, confounders: list, *, K: int = 200, gamma="auto", gamma_x="auto",
                variant: str = "eq2", estimator: str = "hajek", weights: str = "eb", features: str = "squares",
                d_q: int = 25, d_n: int = 25, winsorize: float | None = None, n_boot: int = 200, ci: float = 0.95,
                pairs=None, seed: int = 0, confounder_kind: str = "auto", calibrate="auto", chunk_size: int = 64,
                dtype=torch.float32, tol: float | None = None, max_iter: int | None = None,
                gamma_rule: GammaRule | None = None, device=None, augment="auto", progress: bool = False,
                _stacklevel: int = 3) -> list:
    """:func:`aie_many` for several confounders at once (e.g. ``[topics, None]``: adjusted and unadjusted).

    Every estimator shares the pairs, the bootstrap draws and one pass over the nodes: each chunk's
    coordinates are computed (or streamed from a store) once and used by all of them. ``progress``
    shows a bar over the nodes. Returns one :class:`AIETable` per entry of ``confounders``.
    """
    variant = _choice("variant", variant, VARIANTS)
    estimator = _choice("estimator", estimator, ESTIMATORS)
    weights = _choice("weights", weights, WEIGHTS)
    features = _choice("features", features, FEATURES)
    if variant == "algorithm1" and estimator != "ht":
        raise InputError("variant='algorithm1' reproduces the paper's printed HT form; estimator must be 'ht'")
    if calibrate not in ("auto", True, False):
        raise InputError(f"calibrate must be 'auto', True or False; received {describe(calibrate)}")
    if calibrate is True and estimator != "hajek":
        raise InputError("calibrate=True applies to estimator='hajek'; received estimator='ht'")
    calibrate = estimator == "hajek" if calibrate == "auto" else calibrate
    if augment not in ("auto", True, False):
        raise InputError(f"augment must be 'auto', True or False; received {describe(augment)}")
    if augment is True and estimator != "hajek":
        raise InputError("augment=True applies to estimator='hajek'; received estimator='ht'")
    augment = estimator == "hajek" if augment == "auto" else augment
    for name, v in (("gamma", gamma), ("gamma_x", gamma_x)):
        if not (v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and
                                math.isfinite(v))):
            raise InputError(f"{name} must be 'auto' or a number >= 0; received {describe(v)}")
    if winsorize is not None and not (0 <= winsorize < 0.5):
        raise InputError(f"winsorize must be None or in [0, 0.5); received {describe(winsorize)}")
    if not (0 < ci < 1):
        raise InputError(f"ci must be in (0, 1); received {describe(ci)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise InputError(f"n_boot must be an int >= 0; received {describe(n_boot)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive int; received {describe(chunk_size)}")
    for name, v in (("d_q", d_q), ("d_n", d_n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be a positive int; received {describe(v)}")
    device = resolve_device(device)

    y = _outcome(outcome)
    m = y.shape[0]
    qraw = _matrix("query", query, m)
    source = node_source(nodes, m)
    xs = [confounder_features(c, m, kind=confounder_kind)[0] for c in confounders]
    dq_eff = min(d_q, qraw.shape[1])
    kmax = max((0 if x is None else x.shape[1]) for x in xs)
    _check_size(m, dq_eff, min(d_n, max(source.widths)) + kmax)
    opts = _Options(variant=variant, estimator=estimator, weights=weights, squares=features == "squares",
                    gamma=gamma, gamma_x=gamma_x, rule=gamma_rule or GammaRule(), tol=tol if tol is not None else 1e-4,
                    max_iter=max_iter, seed=seed, device=device, winsorize=winsorize, calibrate=calibrate,
                    augment=augment, dtype=dtype)

    q64 = _coords("query", qraw, d_q, seed)
    q = q64.to(dtype)
    J = _check_pairs(pairs, m) if pairs is not None else torch.from_numpy(pair_index(m, K, seed))
    counts = torch.from_numpy(np.random.default_rng([seed, 1]).multinomial(m, np.full(m, 1.0 / m), size=n_boot)
                              ).to(torch.float64)
    # HT terms vanish where y_i = 0, so only those prompts need pairs (linear time for rare binary labels)
    rows = torch.arange(m) if estimator == "hajek" else torch.nonzero(y != 0).flatten()
    settings = [_setting(c, x, confounder_kind, q, q64, J, rows, opts, _stacklevel) for c, x in zip(confounders, xs)]
    partners = partner_means(q64, J) if augment else None  # shared by every node's outcome model

    N = len(source.widths)
    results = [[None] * N for _ in settings]
    bar = progress_counter(N, enabled=progress, desc="EB-AIE", unit="node")
    try:
        for chunk in _chunks(source.widths, d_n, chunk_size):
            n64 = torch.cat([source.coords(run, d_n, seed) for run in _runs(chunk, source.widths)])
            parts = _estimate_chunk(settings, n64, q, q64, y, J, counts, partners, opts)
            for part, res in zip(parts, results):
                for k, i in enumerate(chunk):
                    res[i] = {key: v[k] for key, v in part.items()}
            bar.update(len(chunk))
    finally:
        bar.close()
    return [_table(st, res, m, J, opts, n_boot, ci) for st, res in zip(settings, results)]


# ----------------------------------------------------------------------------- estimator internals


@dataclass(frozen=True)
class _Options:
    variant: str
    estimator: str
    weights: str
    squares: bool
    gamma: object
    gamma_x: object
    rule: GammaRule
    tol: float
    max_iter: int | None
    seed: int
    device: object
    winsorize: float | None
    calibrate: bool
    augment: bool
    dtype: torch.dtype


@dataclass
class _Setting:
    """One estimator (a confounder, or None for the unadjusted one) and what its nodes share: ``pi_x`` and pairs."""

    x: torch.Tensor | None  # confounder features [m, k] in the solver dtype
    kx: int
    log_f_q: torch.Tensor | None  # parametric weights: log f(q_i)
    lam_x: torch.Tensor | None  # pi_x's dual (warm start of the node models)
    gx: float  # pi_x's product tolerance
    log_pi_x: torch.Tensor  # [m] float64
    all_pairs: _Pairs
    est_pairs: _Pairs
    diag_x: tuple  # gamma_x, ess_x, imbalance_x, status_x

    @property
    def adjusted(self) -> bool:
        return self.x is not None


def _setting(confounder, x_np, kind, q, q64, J, rows, opts: _Options, stacklevel: int) -> _Setting:
    """Fit ``pi_x`` (when adjusted) and the pair structures every node of this estimator shares."""
    m = q.shape[0]
    x = None if x_np is None else torch.from_numpy(x_np).to(opts.dtype)
    log_f_q, lam_x, gx = None, None, 0.0
    log_pi_x = torch.zeros(m, dtype=torch.float64)
    dx_all = torch.zeros(m, J.shape[1], dtype=torch.float64)
    diag_x = (float("nan"), float("nan"), float("nan"), "none")
    if x is not None:
        xmodel, log_f_q = _fit_x(q, x, confounder, kind, opts.weights, opts.gamma_x, opts.rule, opts.squares,
                                 opts.tol, opts.max_iter, opts.seed, opts.device)
        log_pi_x = xmodel.log_pi[0].to(torch.float64)
        block = block_rows(J.shape[1] * q64.shape[1], _Pairs.BLOCK_FLOATS)  # bounded temporaries for large m
        dx_all = torch.cat([xmodel.log_ratio(q64, J, r).double()[..., 0] for r in torch.arange(m).split(block)])
        gx = float(xmodel.gamma[0])
        lam_x = xmodel.lam[0] if getattr(xmodel, "lam", None) is not None else None
        diag_x = (gx, float(xmodel.ess[0]), float(xmodel.imbalance[0]), xmodel.status[0])
        if xmodel.status[0] == "converged" and float(xmodel.ess[0]) < 0.1 * m:
            warnings.warn(f"the confounder model pi_x has ESS {float(xmodel.ess[0]):.0f} of {m} prompts: the topics "
                          "barely overlap in query space, so the adjusted AIE rests on extrapolation",
                          stacklevel=stacklevel)
    all_pairs = _Pairs(q64, J, log_pi_x, dx_all, torch.arange(m))
    est_pairs = all_pairs if len(rows) == m else _Pairs(q64, J, log_pi_x, dx_all, rows)
    return _Setting(x, 0 if x is None else x.shape[1], log_f_q, lam_x, gx, log_pi_x, all_pairs, est_pairs, diag_x)


def _estimate_chunk(settings: list, n64, q, q64, y, J, counts, partners, opts: _Options) -> list:
    """Weights, AIE, bootstrap and diagnostics of a chunk of nodes (coordinates ``n64`` [B, m, d]), per estimator.

    The estimators' weight models are fitted one after the other; their outcome models together (the
    unadjusted one shares the adjusted one's factorization, :func:`~.outcome_model.fit_outcomes`).
    """
    fitted = [_weights(st, n64, q, opts) for st in settings]
    fits = [None] * len(settings)
    if opts.estimator == "hajek" and opts.augment:
        # infeasible weights give no estimate: each node's outcome models are fitted for the estimators
        # that need them, together (nodes grouped by that set of estimators)
        need = torch.stack([~bad for _, _, bad in fitted], 1)  # [B, settings]
        B = n64.shape[0]
        fits = [(torch.zeros(B, y.shape[0], dtype=torch.float64), torch.zeros(B, y.shape[0], dtype=torch.float64))
                for _ in settings]
        for key in {tuple(r) for r in need.tolist()}:
            which = [i for i, v in enumerate(key) if v]
            if not which:
                continue
            nodes = torch.nonzero((need == torch.tensor(key)).all(1)).flatten()
            for i, (h, P) in zip(which, fit_outcomes(q64, n64[nodes], [settings[i].x for i in which], y, J,
                                                     partners=partners)):
                fits[i][0][nodes], fits[i][1][nodes] = h, P
    return [_statistics(st, model, info, bad, n64, q, q64, y, counts, opts, fit)
            for st, (model, info, bad), fit in zip(settings, fitted, fits)]


def _weights(st: _Setting, n64, q, opts: _Options):
    """The chunk's weight models for one estimator: (model, per-node diagnostics, infeasible mask)."""
    n = n64.to(opts.dtype)
    B = n.shape[0]
    x = st.x
    z = torch.cat([n, x.expand(B, -1, -1)], -1) if st.adjusted else n
    gmax = gamma_max_products(q, n)
    noise = torch.full((B,), float("nan"), dtype=opts.dtype)
    if opts.weights == "parametric":
        model = fit_gaussian(q, z, log_f_q=None if st.log_f_q is None else st.log_f_q.to(opts.dtype),
                             squares=opts.squares)
    elif opts.gamma == "auto":
        model, info = select_gamma(q, n, x, st.gx, st.all_pairs, opts.rule, squares=opts.squares, tol=opts.tol,
                                   max_iter=opts.max_iter, seed=opts.seed, lambda_x=st.lam_x, device=opts.device)
        noise = info["gamma_noise"]
    else:
        g = _prod_gamma(torch.full((B,), float(opts.gamma), dtype=opts.dtype), n.shape[2], st.kx, st.gx)
        model = fit_eb(q, z, g, squares=opts.squares, tol=opts.tol, max_iter=opts.max_iter, device=opts.device)
    bad = torch.tensor([s == "infeasible" for s in model.status]) | torch.tensor(st.diag_x[3] == "infeasible")
    return model, {"gamma_max": gmax, "gamma_noise": noise}, bad


def _statistics(st: _Setting, model, info, bad, n64, q, q64, y, counts, opts: _Options, fit) -> dict:
    """AIE, bootstrap and diagnostics of one estimator's chunk; ``fit`` = the outcome model's (h, P) [B, m] or None."""
    B = n64.shape[0]
    x = st.x
    pess = st.all_pairs.pair_ess(model)
    if opts.estimator == "hajek":
        logW, share = st.all_pairs.hajek_totals(model, opts.winsorize)
        value = torch.full((B,), float("nan"), dtype=torch.float64)
        boot = torch.full((B, counts.shape[0]), float("nan"), dtype=torch.float64)
        ok = torch.nonzero(~bad).flatten()
        h = 2 * q64.shape[1] + 2 * n64.shape[2] + st.kx
        step = block_rows(q64.shape[0] * h, 2 * BLOCK_FLOATS)  # the calibration features are [nodes, m, h]
        for s in range(0, ok.numel(), step):
            sub = ok[s:s + step]
            calib = _additive_features(q64, n64[sub], x) if opts.calibrate else None
            aug = None if fit is None else (fit[0][sub], fit[1][sub])
            value[sub], boot[sub] = _stats_hajek(logW[sub], st.log_pi_x, y, counts, calib, aug)
    else:
        row_mean, share = st.est_pairs.ht_row_means(model, y, opts.variant, opts.winsorize)
        value, boot = _stats_ht(row_mean, counts)
    value[bad] = float("nan")
    out = {"value": value, "boot": boot, "winsorized": share, "gamma": model.gamma, "ess": model.ess,
           "imbalance": model.imbalance, "pair_ess": pess, **info}
    out = {k: v.detach().to(torch.float64).cpu() for k, v in out.items()}
    out["status"] = list(model.status)
    return out


def _table(st: _Setting, res: list, m: int, J, opts: _Options, n_boot: int, ci: float) -> AIETable:
    """Assemble the per-node results (in input order) into an :class:`AIETable`."""
    keys = ("value", "boot", "winsorized", "gamma", "ess", "imbalance", "pair_ess", "gamma_max", "gamma_noise")
    cat = {k: torch.stack([r[k] for r in res]).numpy() for k in keys}
    value = cat["value"]
    boot = cat["boot"] if n_boot else np.zeros((len(value), 0))
    alpha = (1 - ci) / 2
    if n_boot:
        lo, hi, se = np.quantile(boot, alpha, axis=1), np.quantile(boot, 1 - alpha, axis=1), boot.std(1, ddof=1)
    else:
        lo = hi = se = np.full(len(value), np.nan)
    nan_rows = np.isnan(value)
    lo, hi, se = (np.where(nan_rows, np.nan, a) for a in (lo, hi, se))
    gx, ess_x, imb_x, status_x = st.diag_x
    return AIETable(
        value=value, ci_low=lo, ci_high=hi, se=se, gamma=cat["gamma"], ess=cat["ess"], pair_ess=cat["pair_ess"],
        imbalance=cat["imbalance"], status=[r["status"] for r in res], winsorized=cat["winsorized"],
        gamma_max=cat["gamma_max"], gamma_noise=cat["gamma_noise"], boot=boot,
        gamma_x=gx, ess_x=ess_x, imbalance_x=imb_x, status_x=status_x,
        n=m, K=int(J.shape[1]), variant=opts.variant, estimator=opts.estimator, weights=opts.weights,
        features="squares" if opts.squares else "paper", adjusted=st.adjusted, winsorize=float(opts.winsorize or 0.0),
        calibrated=bool(opts.calibrate), augmented=bool(opts.augment),
        gamma_rule=opts.rule.to_dict() if "auto" in (opts.gamma, opts.gamma_x) else {})


def aie(query, node, outcome, confounder=None, *, K: int = 200, gamma="auto", gamma_x="auto",
        variant: str = "eq2", estimator: str = "hajek", weights: str = "eb", features: str = "squares",
        d_q: int = 25, d_n: int = 25, winsorize: float | None = None, n_boot: int = 200, ci: float = 0.95,
        pairs=None, seed: int = 0, confounder_kind: str = "auto", calibrate="auto", dtype=torch.float64,
        tol: float | None = None, max_iter: int | None = None, gamma_rule: GammaRule | None = None,
        device=None, augment="auto") -> AIEResult:
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
    table = aie_many(query, [node], outcome, confounder, K=K, gamma=gamma, gamma_x=gamma_x, variant=variant,
                     estimator=estimator, weights=weights, features=features, d_q=d_q, d_n=d_n,
                     winsorize=winsorize, n_boot=n_boot, ci=ci, pairs=pairs, seed=seed,
                     confounder_kind=confounder_kind, calibrate=calibrate, dtype=dtype, tol=tol,
                     max_iter=max_iter, gamma_rule=gamma_rule, device=device, augment=augment)
    return table[0]


# ----------------------------------------------------------------------------- helpers


def _chunks(widths, d_n: int, size: int):
    """Chunks of at most ``size`` node indices whose coordinates have equal width ``min(d_n, width)``.

    Nodes are taken in order of (coordinate width, width), so nodes of every kind share full chunks
    (e.g. 64-wide heads next to 576-wide MLP outputs, both reduced to ``d_n``); results are put back in
    input order by the caller.
    """
    order = sorted(range(len(widths)), key=lambda i: (min(d_n, widths[i]), widths[i]))
    run = []
    for i in order:
        if run and (len(run) == size or min(d_n, widths[run[0]]) != min(d_n, widths[i])):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _runs(chunk, widths):
    """Consecutive runs of equal width within a chunk (their activations stack for the PCA)."""
    return [list(run) for _, run in itertools.groupby(chunk, key=lambda i: widths[i])]


def _additive_features(q64, n64, x):
    """``[q, q^2, n, n^2, x]`` per node, standardized: [B, m, h] (the calibration's balance features)."""
    B = n64.shape[0]
    parts = [q64.expand(B, -1, -1), (q64 * q64).expand(B, -1, -1), n64, n64 * n64]
    if x is not None:
        parts.append(x.double().expand(B, -1, -1))
    return _standardize(torch.cat(parts, -1))


def _fit_x(q, x, confounder, kind, weights, gamma_x, rule, squares, tol, max_iter, seed, device=None):
    """The confounder's ratio model ``pi_x`` (B = 1) and, for parametric weights, ``log f(q_i)``."""
    if weights == "parametric":
        if _is_labels(confounder, kind):
            codes = torch.from_numpy(np.unique(np.asarray(confounder).astype(str), return_inverse=True)[1])
            return fit_topic_gaussian(q, codes, x, squares=squares)
        return fit_gaussian(q, x.unsqueeze(0), squares=squares), None
    if gamma_x == "auto":
        model, _ = select_gamma_x(q, x, rule, squares=squares, tol=tol, max_iter=max_iter, seed=seed, device=device)
    else:
        model = fit_eb(q, x.unsqueeze(0), torch.tensor([float(gamma_x)], dtype=q.dtype), squares=squares, tol=tol,
                       max_iter=max_iter, device=device)
    return model, None


def _is_labels(confounder, kind) -> bool:
    if kind != "auto":
        return kind == "labels"
    arr = np.asarray(confounder.detach().cpu() if isinstance(confounder, torch.Tensor) else confounder)
    return arr.ndim == 1 and arr.dtype.kind in "iubUSO"
