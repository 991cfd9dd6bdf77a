"""The solvers of entropy balancing: working-set Newton and FISTA on the dual, with certificates.

Entropy balancing (Hainmueller 2012) finds the weights ``w`` on the simplex
closest to uniform in entropy such that the weighted column means of a
feature matrix ``G`` vanish; the approximate version (Wang & Zubizarreta
2020) lets column ``k`` be off by at most ``gamma[k]``::

    min_w  sum_i w_i log w_i   s.t.  w in simplex,  |(G^T w)_k| <= gamma_k.

Its dual is unconstrained::

    F(lam) = log sum_i exp(-lam^T g_i) + sum_k gamma_k |lam_k|,
    w(lam) = softmax(-G lam).

The solvers minimise ``F`` for a batch of problems at once, given a feature
operator (:class:`~.features.DenseFeatures` or
:class:`~.features.FactoredFeatures`):

- :func:`newton` (the default): a working-set Newton method, one solver for
  exact and approximate balance: Newton steps on the columns with
  ``gamma = 0``, ``lam != 0`` or a violated tolerance, with the L1 term
  linear within the current orthant (as in OWL-QN, with the exact Hessian
  ``Cov_w(g)`` on the working set), a trust region on the scores and
  backtracking on ``F``. Balance features of the AIE are nearly collinear
  (``p`` close to ``m``, condition numbers 1e5 to 3e5 on SmolLM2's nodes),
  where first-order methods need thousands of iterations; Newton needs tens
  (``benchmarks/solvers.py``).
- :func:`fista`: FISTA with backtracking, the step relaxed each iteration,
  soft thresholding and O'Donoghue-Candes gradient restart (the solver of
  R's WeightIt for L1-regularised EB).

Every solution is certified: :func:`kkt_residual` (zero exactly at the
optimum) and, below ``gamma_min = min over the simplex of ||G^T w||_inf``
where the primal is infeasible and the dual diverges, the free
:func:`certificate` ``min_i g_i^T lam > sum_k gamma_k |lam_k|`` (weak
duality), which gives the problem status ``"infeasible"`` instead of
meaningless weights.

References: Hainmueller (2012) Political Analysis 20:25-46; Wang &
Zubizarreta (2020) Biometrika 107:93-105; Beck & Teboulle (2009) FISTA;
O'Donoghue & Candes (2015) adaptive restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import block_rows, cholesky_escalating

__all__ = ["Solution", "newton", "fista", "kkt_residual", "certificate", "with_offset", "STATUSES"]

STATUSES = ("converged", "max_iter", "infeasible")


@dataclass
class Solution:
    lam: torch.Tensor
    status: list
    n_iter: torch.Tensor


def kkt_residual(grad, lam, gamma):
    """Sup-norm of the minimal subgradient of F: zero exactly at the optimum."""
    on = lam != 0
    r_on = (grad + gamma * torch.sign(lam)).abs()
    r_off = (grad.abs() - gamma).clamp_min(0)
    return torch.where(on, r_on, r_off).amax(-1)


def certificate(s, lam, gamma):
    """The certificate for ``lam`` (any vector: an iterate, a step, a direction) from its scores ``s = -G lam``.

    Weak duality: under any feasible weights ``sum_i w_i g_i^T lam = lam^T G^T w <= sum_k gamma_k |lam_k|``,
    so ``min_i g_i^T lam > sum_k gamma_k |lam_k|`` rules out every feasible ``w``. The margin covers the
    rounding of ``s`` in its dtype.
    """
    lhs = -s.amax(-1)  # s = -G lam
    rhs = (gamma * lam.abs()).sum(-1)
    eps = torch.finfo(s.dtype).eps
    scale = lam.abs().sum(-1) * 1e-9 + 64 * eps * (s.abs().amax(-1) + rhs) + 1e-12
    return (lhs - rhs > scale) & (lam.abs().sum(-1) > 0)


def with_offset(op, s):
    return s if op.offset is None else s + op.offset


def _soft(x, t):
    return torch.sign(x) * (x.abs() - t).clamp_min(0)


def _decrease(logw, ds):
    """``f(lam + d) - f(lam) = log sum_i w_i exp(ds_i)`` for ``ds = s(d)``, accurate for small steps in float32."""
    small = torch.log1p((torch.exp(logw) * torch.expm1(ds.clamp(max=30.0))).sum(-1))
    big = torch.logsumexp(logw + ds, dim=-1)
    return torch.where(ds.amax(-1) < 30.0, small, big)


def fista(op, gamma, lam, *, max_iter, tol, check_every=10):
    """Batched FISTA with backtracking, step relaxation and gradient restart.

    The sufficient-decrease test uses ``f(x) - f(y) = log1p(sum_i w_i
    expm1(ds_i))`` with ``ds = s(x - y)`` (scores are linear in lam), which
    is accurate to the size of the step even in float32, unlike the
    difference of two log-sum-exps.
    """
    B = lam.shape[0]
    dev, dt = lam.device, lam.dtype
    status = ["max_iter"] * B
    n_iter = torch.zeros(B, dtype=torch.long)
    active = torch.arange(B, device=dev)
    out = lam.clone()
    cur_op, g_act = op, gamma
    x = lam.clone()
    y = x.clone()
    t = torch.ones(B, dtype=dt, device=dev)
    L = torch.ones(B, dtype=dt, device=dev)
    slack = 50 * torch.finfo(dt).eps

    def logw_from(o, s):
        logw = torch.log_softmax(with_offset(o, s), dim=-1)
        return logw, -o.moments(torch.exp(logw))

    # scores are linear in lam: s(x) and s(y) are carried along and refreshed exactly at each check
    s_x = cur_op.scores(x)
    s_y = s_x.clone()
    logw_y, g_y = logw_from(cur_op, s_y)
    for it in range(1, max_iter + 1):
        x_new = _soft(y - g_y / L[:, None], g_act / L[:, None])
        d = x_new - y
        ds = cur_op.scores(d)
        df = _decrease(logw_y, ds)
        for _ in range(40):
            model = (g_y * d).sum(-1) + 0.5 * L * (d * d).sum(-1)
            bad = df > model + slack * (g_y.abs() * d.abs()).sum(-1)
            if not bool(bad.any()):
                break
            idx = torch.nonzero(bad).flatten()
            L[idx] = L[idx] * 2.0
            x_new[idx] = _soft(y[idx] - g_y[idx] / L[idx, None], g_act[idx] / L[idx, None])
            d[idx] = x_new[idx] - y[idx]
            ds[idx] = cur_op.subset(idx).scores(d[idx])
            df[idx] = _decrease(logw_y[idx], ds[idx])
        s_new = s_y + ds
        # gradient restart (O'Donoghue & Candes): momentum against the step
        restart = ((y - x_new) * (x_new - x)).sum(-1) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        t = torch.where(restart, torch.ones_like(t), t_new)
        y = x_new + beta[:, None] * (x_new - x)
        s_y = s_new + beta[:, None] * (s_new - s_x)
        x, s_x = x_new, s_new
        L = L * 0.9
        if it % check_every and it != max_iter:
            logw_y, g_y = logw_from(cur_op, s_y)
            continue
        s_x, s_y = cur_op.scores(x), cur_op.scores(y)  # refresh: no drift
        logw_y, g_y = logw_from(cur_op, s_y)
        _, g_x = logw_from(cur_op, s_x)
        done = kkt_residual(g_x, x, g_act) <= tol
        infeasible = certificate(s_x, x, g_act) & ~done
        stop = done | infeasible
        n_iter[active.cpu()] = it
        if not bool(stop.any()):
            continue
        for k in torch.nonzero(stop).flatten().tolist():
            status[int(active[k])] = "converged" if bool(done[k]) else "infeasible"
        out[active[stop]] = x[stop]
        keep = torch.nonzero(~stop).flatten()
        active = active[keep]
        if active.numel() == 0:
            break
        cur_op = cur_op.subset(keep)
        g_act, x, y, t, L = g_act[keep], x[keep], y[keep], t[keep], L[keep]
        s_x, s_y, logw_y, g_y = s_x[keep], s_y[keep], logw_y[keep], g_y[keep]
    if active.numel():
        out[active] = x
    return Solution(out, status, n_iter)


def _hessian(op, idx, valid, w, mu):
    """``Cov_w`` of the columns ``idx`` [B, a] of ``G`` (padding where not ``valid``): [B, a, a].

    The columns are centred at their weighted means and scaled by ``sqrt(w)`` before the product (better
    conditioned than ``G^T W G - mu mu^T`` in float32); problems are taken a few at a time so that the
    dense ``[b, a, m]`` rows stay small (:func:`~.linalg.block_rows`).
    """
    B, a = idx.shape
    step = block_rows(op.m * a)
    out = []
    for s in range(0, B, step):
        sl = slice(s, min(B, s + step))
        R = op.rows(idx[sl], batch=sl)
        R.sub_((torch.gather(mu[sl], 1, idx[sl].clamp(max=op.p - 1)) * valid[sl]).unsqueeze(-1))
        R.mul_(w[sl].sqrt().unsqueeze(1))
        out.append(torch.bmm(R, R.transpose(1, 2)))
    return torch.cat(out)


def newton(op, gamma, lam, *, max_iter, tol, trust=30.0):
    """Batched working-set Newton on the dual, for exact (gamma = 0) and approximate (gamma > 0) balance.

    Each step, per problem: weights ``w = softmax(-G lam)``, gradient ``-G^T w``; stop where the KKT
    residual is at most ``tol`` (``converged``) or a certificate holds for ``lam`` or for the step's
    direction (``infeasible``; :func:`certificate`). Otherwise the working set is the
    columns with ``gamma = 0``, ``lam != 0`` or ``|grad| > gamma``; with the orthant ``sigma = sign(lam)``
    (``-sign(grad)`` where ``lam = 0``) the penalty is linear there, and the Newton direction of
    ``f + sum gamma_k sigma_k lam_k`` on the working set (Hessian ``Cov_w(G_A)`` plus a small ridge)
    is followed, with the components that would leave the orthant at once dropped (as in OWL-QN),
    scaled so that no score moves by more than ``trust`` nats, and backtracked (Armijo on the full
    objective) with components that cross zero set to zero. Near the optimum the working set is the
    support and the steps are those of Newton's method on it, so convergence is quadratic; a problem
    whose line search cannot decrease the objective stops with ``max_iter``.
    """
    B, p = lam.shape
    dt = lam.dtype
    status = ["max_iter"] * B
    n_iter = torch.zeros(B, dtype=torch.long)
    out = lam.clone()
    active = torch.arange(B, device=lam.device)
    cur, g_act, x = op, gamma, lam.clone()
    free = g_act == 0
    ridge = 1e-10 if dt == torch.float64 else 1e-6  # relative to the Hessian's mean diagonal
    for it in range(max_iter + 1):
        s = cur.scores(x)
        logw = torch.log_softmax(with_offset(cur, s), dim=-1)
        w = torch.exp(logw)
        mu = cur.moments(w)
        grad = -mu
        done = kkt_residual(grad, x, g_act) <= tol
        stop = done | (certificate(s, x, g_act) & ~done)
        if it < max_iter and not bool(stop.all()):
            nz = x != 0
            ws = free | nz | (grad.abs() > g_act)
            sigma = torch.where(free, torch.zeros_like(x), torch.where(nz, torch.sign(x), -torch.sign(grad)))
            pg = torch.where(ws, grad + g_act * sigma, torch.zeros_like(grad))  # pseudo-gradient on the working set
            a = int(ws.sum(-1).max())
            order = torch.argsort((~ws).to(torch.int8), dim=-1, stable=True)[:, :a]
            valid = torch.gather(ws, 1, order)
            idx = torch.where(valid, order, torch.full_like(order, p))  # index p: a zero column
            H = _hessian(cur, idx, valid, w, mu)
            diag = torch.diagonal(H, dim1=-2, dim2=-1)
            scale = ((diag * valid).sum(-1) / valid.sum(-1).clamp_min(1)).clamp_min(1e-300)
            rhs = -(torch.gather(pg, 1, idx.clamp(max=p - 1)) * valid).to(H.dtype).unsqueeze(-1)
            one = torch.ones_like(diag)  # a larger ridge where the factorization fails
            L, info = cholesky_escalating(H, (torch.where(valid, r * scale[:, None], one) for r in (ridge, 1e-4, 1e-1)))
            dA = torch.cholesky_solve(rhs, L).squeeze(-1)
            dA = torch.where((info > 0)[:, None], rhs.squeeze(-1) / scale[:, None], dA)  # else a gradient step
            d = torch.zeros_like(x).scatter_add_(1, idx.clamp(max=p - 1), (dA * valid).to(dt))
            d = torch.where(~free & ~nz & (torch.sign(d) != sigma), torch.zeros_like(d), d)  # stay in the orthant
            ds = cur.scores(d)
            fac = trust / ds.abs().amax(-1).clamp_min(trust)
            d, ds = d * fac[:, None], ds * fac[:, None]
            by_dir = certificate(ds, d, g_act) & ~stop
            if bool(by_dir.any()):  # move far enough along the certifying direction that lam itself certifies
                gap = (s.amax(-1) + (g_act * x.abs()).sum(-1)).clamp_min(0)  # -(margin of lam), if negative
                margin = -ds.amax(-1) - (g_act * d.abs()).sum(-1)
                c = 2 * gap / margin.clamp_min(torch.finfo(dt).tiny) + 1
                x = torch.where(by_dir[:, None], x + c[:, None] * d, x)
            stop = stop | by_dir
        n_iter[active.cpu()] = it
        if bool(stop.any()) or it == max_iter:
            for k in torch.nonzero(stop).flatten().tolist():
                status[int(active[k])] = "converged" if bool(done[k]) else "infeasible"
            out[active] = x
            if it == max_iter or bool(stop.all()):
                break
            keep = torch.nonzero(~stop).flatten()
            active, cur = active[keep], cur.subset(keep)
            g_act, free, x, logw, pg, sigma, d, ds = (t[keep] for t in (g_act, free, x, logw, pg, sigma, d, ds))
        # backtracking on F = f + sum gamma |lam|, projecting components that cross zero; the scores of a
        # projected step are t ds minus the zeroed components' part, from the rows of the columns that can cross
        t = torch.ones(x.shape[0], dtype=dt, device=x.device)
        pending = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        new = x.clone()
        can = ~free & (x * d < 0) & (d.abs() >= x.abs())  # crosses zero at some t <= 1
        c = int(can.sum(-1).max())
        if c:
            corder = torch.argsort((~can).to(torch.int8), dim=-1, stable=True)[:, :c]
            cvalid = torch.gather(can, 1, corder)
            crows = cur.rows(torch.where(cvalid, corder, torch.full_like(corder, p)))  # [B, c, m]
            xc, dcc, sc = (torch.gather(v, 1, corder) for v in (x, d, sigma))
        for _ in range(50):
            cand = x + t[:, None] * d
            cross = ~free & (torch.sign(cand) * sigma < 0)
            cand = torch.where(cross, torch.zeros_like(cand), cand)
            step = cand - x
            dsc = t[:, None] * ds
            if c:
                vc = xc + t[:, None] * dcc
                vc = torch.where(cvalid & (torch.sign(vc) * sc < 0), vc, torch.zeros_like(vc))
                dsc = dsc + torch.bmm(vc.unsqueeze(1), crows).squeeze(1)
            dF = _decrease(logw, dsc) + (g_act * (cand.abs() - x.abs())).sum(-1)
            ok = pending & (dF <= 1e-4 * (pg * step).sum(-1))
            new[ok] = cand[ok]
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t / 2, t)
        x = new
        if bool(pending.any()):  # no decrease along the direction: stop these problems where they are
            stuck = torch.nonzero(pending).flatten()
            out[active[stuck]] = x[stuck]
            keep = torch.nonzero(~pending).flatten()
            if keep.numel() == 0:
                break
            active, cur = active[keep], cur.subset(keep)
            g_act, free, x = g_act[keep], free[keep], x[keep]
    return Solution(out, status, n_iter)
