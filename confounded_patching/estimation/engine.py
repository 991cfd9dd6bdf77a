"""The estimator's pass over the nodes: chunks of nodes, their weight models, AIEs and diagnostics.

:func:`run` is what :func:`~.aie.aie_many` does once its inputs are
checked. For each estimator (a confounder, or None for the unadjusted one) a
:class:`Setting` holds what all its nodes share: the confounder model
``pi_x`` and the partners (:class:`~.partners.Partners`). The nodes are then
taken a chunk at a time (:func:`chunks`: nodes of equal coordinate width
together, whatever their kind); each chunk's coordinates are computed (or
streamed from a store, :mod:`~.node_coords`) once and used by every
estimator: weight models (:mod:`~.ratio_models`, :mod:`~.gamma_rule`),
outcome models (:mod:`~.outcome_model`), then the AIE and its bootstrap
(:mod:`~.partners`).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..progress import progress_counter
from .confounders import is_labels
from .gamma_rule import product_gamma, select_gamma, select_gamma_x
from .detectable import information
from .linalg import BLOCK_FLOATS, block_rows, canonical_correlations
from .options import AIEOptions
from .outcome_model import fit_outcomes, partner_means
from .partners import Partners, additive_features, stats_hajek, stats_ht
from .ratio_models import fit_eb, fit_gaussian, fit_topic_gaussian, gamma_max_products

__all__ = ["Setting", "setting", "run", "chunks"]


@dataclass
class Setting:
    """One estimator (a confounder, or None for the unadjusted one) and what its nodes share: ``pi_x`` and pairs."""

    x: torch.Tensor | None  # confounder features [m, k] in the solver dtype
    kx: int
    log_f_q: torch.Tensor | None  # parametric weights: log f(q_i)
    lam_x: torch.Tensor | None  # pi_x's dual (warm start of the node models)
    gx: float  # pi_x's product tolerance
    log_pi_x: torch.Tensor  # [m] float64
    all_pairs: Partners
    est_pairs: Partners
    diag_x: tuple  # gamma_x, ess_x, imbalance_x, status_x

    @property
    def adjusted(self) -> bool:
        return self.x is not None


def setting(confounder, x_np, q, q64, J, rows, opts: AIEOptions, stacklevel: int) -> Setting:
    """Fit ``pi_x`` (when adjusted) and the pair structures every node of this estimator shares.

    ``stacklevel`` of the warning about a confounder model with little overlap: the caller's code.
    """
    m = q.shape[0]
    x = None if x_np is None else torch.from_numpy(x_np).to(opts.dtype)
    log_f_q, lam_x, gx = None, None, 0.0
    log_pi_x = torch.zeros(m, dtype=torch.float64)
    dx_all = torch.zeros(m, J.shape[1], dtype=torch.float64)
    diag_x = (float("nan"), float("nan"), float("nan"), "none")
    if x is not None:
        xmodel, log_f_q = _fit_x(q, x, confounder, opts)
        log_pi_x = xmodel.log_pi[0].to(torch.float64)
        block = block_rows(J.shape[1] * q64.shape[1], Partners.BLOCK_FLOATS)  # bounded temporaries for large m
        dx_all = torch.cat([xmodel.log_ratio(q64, J, r).double()[..., 0] for r in torch.arange(m).split(block)])
        gx = float(xmodel.gamma[0])
        lam_x = xmodel.lam[0] if getattr(xmodel, "lam", None) is not None else None
        diag_x = (gx, float(xmodel.ess[0]), float(xmodel.imbalance[0]), xmodel.status[0])
        if xmodel.status[0] == "converged" and float(xmodel.ess[0]) < 0.1 * m:
            warnings.warn(f"the confounder model pi_x has ESS {float(xmodel.ess[0]):.0f} of {m} prompts: the topics "
                          "barely overlap in query space, so the adjusted AIE rests on extrapolation",
                          stacklevel=stacklevel + 1)
    all_pairs = Partners(q64, J, log_pi_x, dx_all, torch.arange(m))
    est_pairs = all_pairs if len(rows) == m else Partners(q64, J, log_pi_x, dx_all, rows)
    return Setting(x, 0 if x is None else x.shape[1], log_f_q, lam_x, gx, log_pi_x, all_pairs, est_pairs, diag_x)


def run(settings: list, source, q, q64, y, J, counts, opts: AIEOptions, progress: bool = False) -> list:
    """Per-node results of every estimator: ``[estimator][node] -> {name: value}``, nodes in input order.

    ``source`` is a node source (:func:`~.node_coords.node_source`), ``q``/``q64`` the query coordinates in
    the solver dtype and in float64, ``J`` the partners ``[m, K]`` and ``counts`` the bootstrap draws.
    """
    partners = partner_means(q64, J) if opts.augment else None  # shared by every node's outcome model
    N = len(source.widths)
    results = [[None] * N for _ in settings]
    bar = progress_counter(N, enabled=progress, desc="EB-AIE", unit="node")
    try:
        for chunk in chunks(source.widths, opts.d_n, opts.chunk_size):
            n64 = torch.cat([source.coords(run_, opts.d_n, opts.seed) for run_ in _runs(chunk, source.widths)])
            parts = _estimate_chunk(settings, n64, q, q64, y, J, counts, partners, opts)
            for part, res in zip(parts, results):
                for k, i in enumerate(chunk):
                    res[i] = {key: v[k] for key, v in part.items()}
            bar.update(len(chunk))
    finally:
        bar.close()
    return results


def _estimate_chunk(settings: list, n64, q, q64, y, J, counts, partners, opts: AIEOptions) -> list:
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


def _weights(st: Setting, n64, q, opts: AIEOptions):
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
        model, info = select_gamma(q, n, x, st.gx, st.all_pairs, opts.gamma_rule, squares=opts.squares,
                                   tol=opts.tol, max_iter=opts.max_iter, seed=opts.seed, lambda_x=st.lam_x,
                                   device=opts.device)
        noise = info["gamma_noise"]
    else:
        g = product_gamma(torch.full((B,), float(opts.gamma), dtype=opts.dtype), n.shape[2], st.kx, st.gx)
        model = fit_eb(q, z, g, squares=opts.squares, tol=opts.tol, max_iter=opts.max_iter, device=opts.device)
    bad = torch.tensor([s == "infeasible" for s in model.status]) | torch.tensor(st.diag_x[3] == "infeasible")
    return model, {"gamma_max": gmax, "gamma_noise": noise}, bad


def _statistics(st: Setting, model, info, bad, n64, q, q64, y, counts, opts: AIEOptions, fit) -> dict:
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
            calib = additive_features(q64, n64[sub], x) if opts.calibrate else None
            aug = None if fit is None else (fit[0][sub], fit[1][sub])
            value[sub], boot[sub] = stats_hajek(logW[sub], st.log_pi_x, y, counts, calib, aug)
    else:
        row_mean, share = st.est_pairs.ht_row_means(model, y, opts.variant, opts.winsorize)
        value, boot = stats_ht(row_mean, counts)
    value[bad] = float("nan")
    rho = canonical_correlations(q64, n64, None if x is None else x)
    corr = rho[:, 0] if rho.shape[1] else torch.zeros(B, dtype=torch.float64)
    constant = n64.abs().flatten(1).amax(1) == 0
    out = {"value": value, "boot": boot, "winsorized": share, "gamma": model.gamma, "ess": model.ess,
           "imbalance": model.imbalance, "pair_ess": pess, "query_corr": torch.where(constant, 0.0, corr),
           "information": torch.where(constant, 0.0, information(rho)), "constant": constant, **info}
    out = {k: v.detach().to(torch.float64).cpu() for k, v in out.items()}
    out["status"] = list(model.status)
    return out


def chunks(widths, d_n: int, size: int):
    """Chunks of at most ``size`` node indices whose coordinates have equal width ``min(d_n, width)``.

    Nodes are taken in order of (coordinate width, width), so nodes of every kind share full chunks
    (e.g. 64-wide heads next to 576-wide MLP outputs, both reduced to ``d_n``); results are put back in
    input order by the caller.
    """
    order = sorted(range(len(widths)), key=lambda i: (min(d_n, widths[i]), widths[i]))
    run_ = []
    for i in order:
        if run_ and (len(run_) == size or min(d_n, widths[run_[0]]) != min(d_n, widths[i])):
            yield run_
            run_ = []
        run_.append(i)
    if run_:
        yield run_


def _runs(chunk, widths):
    """Consecutive runs of equal width within a chunk (their activations stack for the PCA)."""
    return [list(run_) for _, run_ in itertools.groupby(chunk, key=lambda i: widths[i])]


def _fit_x(q, x, confounder, opts: AIEOptions):
    """The confounder's ratio model ``pi_x`` (B = 1) and, for parametric weights, ``log f(q_i)``."""
    squares = opts.squares
    if opts.weights == "parametric":
        if is_labels(confounder, opts.confounder_kind):
            codes = torch.from_numpy(np.unique(np.asarray(confounder).astype(str), return_inverse=True)[1])
            return fit_topic_gaussian(q, codes, x, squares=squares)
        return fit_gaussian(q, x.unsqueeze(0), squares=squares), None
    if opts.gamma_x == "auto":
        model, _ = select_gamma_x(q, x, opts.gamma_rule, squares=squares, tol=opts.tol, max_iter=opts.max_iter,
                                  seed=opts.seed, device=opts.device)
    else:
        model = fit_eb(q, x.unsqueeze(0), torch.tensor([float(opts.gamma_x)], dtype=q.dtype), squares=squares,
                       tol=opts.tol, max_iter=opts.max_iter, device=opts.device)
    return model, None
