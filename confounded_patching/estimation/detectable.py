"""The smallest AIE the data can tell from 0 at a node, whatever the estimator.

A node that is nearly a function of the query carries an interaction
``q x n`` with the outcome only through the part of it the query does not
determine, ``u = n - E[n | q, x]``. Take the local model

    y = q^T C n + f(q, x) + noise,    n = M q + P x + u,   u ~ N(0, Sigma_u) given (q, x),

with ``C`` unknown and ``f`` any function (the query's own effect, quadratic
terms included, which a node close to a copy of the query can imitate). Its
AIE is ``-tr(C M Sigma_Q)``, and the efficient score of ``C`` is ``q u^T``
times the outcome's residual: the variation of ``n`` that the query
determines is spent on ``f``. The Cramer-Rao bound for the AIE is then
``se >= sigma sqrt(I / m)`` with

    I = tr(M^T Sigma_u^-1 M Sigma_Q) = sum_k rho_k^2 / (1 - rho_k^2),

``rho_k`` the canonical correlations of node and query (partial, given the
confounder, when adjusted) and ``sigma`` the outcome's residual standard
deviation. It holds locally uniformly (the Hajek-Le Cam local asymptotic
minimax theorem), for every estimator: EB weights, an outcome model or
anything else. So an AIE smaller than

    detectable = (z_{1 - level / 2} + z_power) sigma sqrt(I / m)

cannot be told from 0 at the given level and power by any estimator (the
usual minimal detectable effect, 2.8 standard errors at 5% and 80%). The
rate is the one of ``benchmarks/studies/family.py``'s bound, where an
estimator that uses only ``u`` (a Stein-type moment estimator) attains it.

Two caveats make it a floor, not a forecast: the sample canonical
correlations are biased upward at few prompts per dimension (a little, unless
they are near 1), and ``sigma`` is the residual of ``y`` on ``[1, q, q^2, x]``
(an additive fit: the floor scales with what the query leaves unexplained).

    >>> rho = canonical_correlations(q, n)          # [B, k]
    >>> detectable_effect(information(rho), outcome_noise(y, q), m)
"""

from __future__ import annotations

from statistics import NormalDist

import torch

__all__ = ["LEVEL", "POWER", "information", "outcome_noise", "detectable_effect"]

LEVEL = 0.05  # two-sided test level of the detectable effect
POWER = 0.8  # its power


def information(rho: torch.Tensor) -> torch.Tensor:
    """``sum_k rho_k^2 / (1 - rho_k^2)`` over the last axis (``inf`` where some ``rho_k`` is 1): [B]."""
    rho = rho.double().clamp(0.0, 1.0)
    r2 = rho * rho
    terms = torch.where(r2 < 1.0, r2 / (1.0 - r2).clamp_min(1e-300), torch.full_like(r2, float("inf")))
    return terms.sum(-1)


def outcome_noise(y: torch.Tensor, q: torch.Tensor, x: torch.Tensor | None = None) -> float:
    """Residual standard deviation of ``y`` [m] on ``[1, q, q^2, x]`` (least squares)."""
    y = y.double().reshape(-1)
    q = q.double()
    cols = [torch.ones_like(y)[:, None], q, q * q] + ([] if x is None else [x.double()])
    F = torch.cat(cols, 1)
    if F.shape[1] >= y.shape[0]:
        return float(y.std(unbiased=False))
    beta = torch.linalg.lstsq(F, y[:, None], driver="gelsd").solution
    r = y - (F @ beta)[:, 0]
    return float((r.square().sum() / (y.shape[0] - F.shape[1])).sqrt())


def detectable_effect(info, sigma: float, m: int, *, level: float = LEVEL, power: float = POWER):
    """``(z_{1 - level/2} + z_power) sigma sqrt(info / m)``: the smallest AIE any estimator tells from 0."""
    z = NormalDist().inv_cdf(1 - level / 2) + NormalDist().inv_cdf(power)
    return z * sigma * (torch.as_tensor(info, dtype=torch.float64) / m).sqrt()
