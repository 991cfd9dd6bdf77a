"""The ``gamma="auto"`` rule: how much imbalance the node and topic weight models may keep.

Approximate entropy balancing (Wang & Zubizarreta 2020) leaves each product
column ``q outer n`` within ``gamma`` of zero. At ``gamma >= gamma_max`` the
node's weights are uniform and the AIE is (nearly) 0; as ``gamma`` shrinks
the cross-world ratios approach the density ratios the AIE needs, until the
weights degenerate or the balance becomes infeasible (positivity). The rule
walks down a geometric path from ``gamma_max`` and stops at the last point
that is converged, above the noise level of the product columns, and whose
pair weights keep at least a set share of their effective sample size (see
:func:`select_gamma`; the evidence for the thresholds is in
``docs/estimator.md`` and ``benchmarks/studies/accuracy.py --rules``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ratio_models import RatioModel, embed_lambda_x, fit_eb, gamma_max_products

__all__ = ["GammaRule", "noise_level", "product_gamma", "select_gamma", "select_gamma_x"]


@dataclass(frozen=True)
class GammaRule:
    """The ``gamma="auto"`` rule (see :func:`select_gamma`) and its knobs.

    Attributes:
        ratio: geometric step of the path ``gamma_t = gamma_max * ratio^t``.
        n_steps: longest path.
        pair_ess_floor: stop before the pair weights' effective sample size
            falls below this share of its value at the top of the path.
        noise_floor: never go below the noise level of the product columns
            (their largest |mean| after randomly permuting the node's rows,
            median over ``n_perm`` permutations).
        n_perm: permutations for the noise level.
        step_max_iter: Newton steps of each path point after the first
            (warm-started, they usually take a few); a point that does not
            converge within it ends the path.
    """

    ratio: float = 0.8
    n_steps: int = 16
    pair_ess_floor: float = 0.1
    noise_floor: bool = True
    n_perm: int = 5
    step_max_iter: int = 50

    def to_dict(self) -> dict:
        return {"rule": "pair_ess_floor+noise_floor", "ratio": self.ratio, "n_steps": self.n_steps,
                "pair_ess_floor": self.pair_ess_floor, "noise_floor": self.noise_floor, "n_perm": self.n_perm,
                "step_max_iter": self.step_max_iter}


def noise_level(q: torch.Tensor, n: torch.Tensor, n_perm: int = 5, seed: int = 0) -> torch.Tensor:
    """Largest |mean| of the products ``q outer n`` when ``n``'s rows are permuted (median of ``n_perm``): [B]."""
    n = n if n.ndim == 3 else n.unsqueeze(0)
    gen = torch.Generator().manual_seed(int(seed))
    levels = [gamma_max_products(q, n[:, torch.randperm(q.shape[0], generator=gen)]) for _ in range(n_perm)]
    return torch.stack(levels).median(0).values


def product_gamma(g: torch.Tensor, d_n: int, kx: int, gamma_x: float) -> torch.Tensor:
    """Per-z-column product tolerance: ``g`` on ``q outer n``, ``gamma_x`` on ``q outer x``."""
    B = g.shape[0]
    cols = [g[:, None].expand(B, d_n)]
    if kx:
        cols.append(torch.full((B, kx), float(gamma_x), dtype=g.dtype))
    return torch.cat(cols, 1)


def select_gamma(q, n, x, gamma_x, pairs, rule: GammaRule, *, squares: bool, tol: float,
                 max_iter: int, seed: int = 0, lambda_x=None, device=None):
    """Entropy-balancing node models with gamma chosen per node by the ``"auto"`` rule.

    Rule: walk the product tolerance down ``gamma_t = gamma_max * ratio^t``
    (``t = 0, 1, ...``; ``gamma_max`` = largest |mean| of the ``q outer n``
    columns under uniform or ``pi_x`` weights), with ``gamma = 0`` on the marginal columns ``q, q^2, n, x`` and
    the confounder model's ``gamma_x`` on ``q outer x``, warm-starting each
    solve. Keep the last point of the contiguous run from ``t = 0`` where

    1. the solver converged (not infeasible, not ``max_iter``),
    2. ``gamma_t`` is at least the noise level of the product columns
       (:func:`noise_level`; balancing below it only fits noise), and
    3. the pair weights' effective sample size is at least
       ``pair_ess_floor`` times its value at ``t = 0``.

    At ``t = 0`` the node's products are (nearly) unconstrained, so the AIE
    is (nearly) 0: the rule moves away from 0 only as far as the weights
    stay stable. Chosen by measurement against planted truth
    (``docs/estimator.md``, ``benchmarks/studies/accuracy.py``).

    ``lambda_x`` (``pi_x``'s dual) warm-starts the top of the path;
    ``device`` is where the solves run (:func:`~.ratio_models.fit_eb`).

    Returns:
        (model, info): the selected :class:`RatioModel` and per-node arrays
        ``gamma_max``, ``gamma_noise``, ``pair_ess`` (at the selected point)
        and ``steps`` (index of the selected point).
    """
    B, m, d_n = n.shape
    kx = 0 if x is None else x.shape[1]
    z = n if x is None else torch.cat([n, x.expand(B, -1, -1)], -1)
    gmax = gamma_max_products(q, n)
    if x is not None:  # the path starts loose under pi_x's weights too
        w_x = torch.softmax(pairs.lp, 0).to(q.dtype)
        gmax = torch.maximum(gmax, torch.einsum("m,md,bme->bde", w_x, q, n).abs().flatten(1).amax(-1))
    floor = noise_level(q, n, rule.n_perm, seed) if rule.noise_floor else torch.zeros_like(gmax)
    init = None
    if lambda_x is not None:
        init = embed_lambda_x(lambda_x.to(q.dtype), q.shape[1], d_n, kx, squares=squares).expand(B, -1)
    model = fit_eb(q, z, product_gamma(gmax, d_n, kx, gamma_x), squares=squares, tol=tol, max_iter=max_iter,
                   lambda_init=init, device=device)
    ref = pairs.pair_ess(model)
    chosen, pess_sel, lam = model, ref.clone(), model.lam
    steps = torch.zeros(B, dtype=torch.long)
    going = torch.tensor([st == "converged" for st in model.status]) & (gmax >= floor)
    for t in range(1, rule.n_steps + 1):
        idx = torch.nonzero(going).flatten()
        if idx.numel() == 0:
            break
        g = gmax[idx] * rule.ratio ** t
        sub = fit_eb(q, z[idx], product_gamma(g, d_n, kx, gamma_x), squares=squares, tol=tol,
                     max_iter=rule.step_max_iter, lambda_init=lam[idx], device=device)
        conv = torch.tensor([st == "converged" for st in sub.status])
        pess = pairs.pair_ess(sub)
        ok = conv & (g >= floor[idx]) & (pess >= rule.pair_ess_floor * ref[idx])
        keep = idx[ok]
        if keep.numel():
            chosen = _merge(chosen, sub.select(torch.nonzero(ok).flatten()), keep)
            pess_sel[keep] = pess[ok]
            steps[keep] = t
            lam[keep] = sub.lam[ok]
        going[idx[~ok]] = False
    info = {"gamma_max": gmax, "gamma_noise": floor, "pair_ess": pess_sel, "steps": steps}
    return chosen, info


def select_gamma_x(q, x, rule: GammaRule, *, squares: bool, tol: float, max_iter: int, seed: int = 0,
                   n_bisect: int = 6, margin: float = 0.1, device=None):
    """The confounder model ``pi_x``: the smallest converged gamma above the noise level.

    Walks ``gamma_max * ratio^t`` down like :func:`select_gamma` and stops
    at the noise level. When a point fails (infeasible: the topics barely
    overlap in query space) the feasibility boundary between it and the
    last converged point is refined by ``n_bisect`` bisections and gamma is
    set ``margin`` (10%) above it, so that nearly separated topics get the
    tightest balance that exists, with room for the node models' own
    constraints.
    """
    z = x.unsqueeze(0)
    gmax = gamma_max_products(q, z)
    floor = noise_level(q, x, rule.n_perm, seed) if rule.noise_floor else torch.zeros_like(gmax)
    def fit(g, lam, budget=rule.step_max_iter):
        return fit_eb(q, z, g, squares=squares, tol=tol, max_iter=budget, lambda_init=lam, device=device)

    chosen = fit(gmax, None, max_iter)
    good, bad = gmax, None
    for t in range(1, rule.n_steps + 1):
        g = torch.maximum(gmax * rule.ratio ** t, floor)
        model = fit(g, chosen.lam)
        if model.status[0] != "converged":
            bad = g
            break
        chosen, good = model, g
        if bool((g <= floor).all()):
            break
    if bad is not None:
        # refine the feasibility boundary, then back off by ``margin`` so the node models
        # (which add the node's own constraints) stay feasible
        for _ in range(n_bisect):
            g = (good + bad) / 2
            model = fit(g, chosen.lam)
            if model.status[0] == "converged":
                chosen, good = model, g
            else:
                bad = g
        g = torch.minimum(good * (1 + margin), gmax)
        model = fit(g, chosen.lam)
        if model.status[0] == "converged":
            chosen = model
    return chosen, {"gamma_max": gmax, "gamma_noise": floor}


def _merge(old: RatioModel, new: RatioModel, idx: torch.Tensor) -> RatioModel:
    """``old`` with problems ``idx`` replaced by the rows of ``new`` (one row per index)."""
    a, U, log_pi, lam = old.a.clone(), old.U.clone(), old.log_pi.clone(), old.lam.clone()
    gamma, ess, imb, n_iter = old.gamma.clone(), old.ess.clone(), old.imbalance.clone(), old.n_iter.clone()
    status = list(old.status)
    a[idx], U[idx], log_pi[idx], lam[idx] = new.a, new.U, new.log_pi, new.lam
    gamma[idx], ess[idx], imb[idx], n_iter[idx] = new.gamma, new.ess, new.imbalance, new.n_iter
    for k, i in enumerate(idx.tolist()):
        status[i] = new.status[k]
    return RatioModel(a, U, log_pi, status, gamma, ess, imb, n_iter, lam)
