"""Simulated prompts with a planted AIE, for validating the estimator.

Structural models with a topic confounder ``x``, a query ``q`` and node
activations ``n``. The target is the pairwise AIE of ``docs/estimator.md``::

    AIE = E[Y(Q, N(Q'), X)] - E[Y(Q, N(Q), X)],   Q, Q' ~ f(q) i.i.d., X ~ f(x) independent.

Designs:

- ``gaussian_sem``: ``x ~ Cat(k)``; ``q | x ~ N(alpha_x, I)``; causal nodes
  ``n = B q + eps``; topic-only ("spurious") nodes ``n = D alpha_x + eps``
  (independent of ``q`` given ``x``); ``y = sum_nodes q^T C n + b^T q +
  theta_x + noise``. Truth per node ``-tr(C B Sigma_Q)`` with ``Sigma_Q``
  the marginal covariance of ``q``; 0 for topic-only nodes.
  ``confounding=0`` randomises the query (``q`` independent of ``x``).
- ``additive``: the same nodes with ``y = sin(q_1) + n_1^2 + theta_x``:
  truth 0 for every node (the AIE of an additive outcome).
- ``nonlinear``: ``n = tanh(W q) + delta_x + eps`` with ``y = q^T C n``;
  truth ``-E[(Q - EQ)^T C tanh(W Q)]`` by Monte Carlo.

Example::

    >>> sim = gaussian_sem(m=2000, seed=0)
    >>> sim.query.shape, sim.nodes.shape, sim.truth
    ((2000, 2), (2, 2000, 2), array([-0.61,  0.  ]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Simulation", "gaussian_sem", "additive", "nonlinear"]


@dataclass(frozen=True)
class Simulation:
    """Simulated data: ``query [m, d_q]``, ``nodes [n_nodes, m, d_n]``, ``outcome [m]``, ``topics [m]``, ``truth [n_nodes]``."""

    query: np.ndarray
    nodes: np.ndarray
    outcome: np.ndarray
    topics: np.ndarray
    truth: np.ndarray
    names: tuple


def _common(rng, m, d_q, k, confounding):
    topics = rng.integers(0, k, size=m)
    alpha = rng.normal(size=(k, d_q)) * confounding
    q = alpha[topics] + rng.normal(size=(m, d_q))
    w = np.full(k, 1.0 / k)
    a_bar = w @ alpha
    sigma_q = np.eye(d_q) + (alpha - a_bar).T @ np.diag(w) @ (alpha - a_bar)
    return topics, alpha, q, sigma_q


def gaussian_sem(m: int = 2000, *, d_q: int = 2, d_n: int = 2, k: int = 3, n_causal: int = 1, n_spurious: int = 1,
                 confounding: float = 1.5, strength: float = 1.0, effect: float = 1.0, noise: float = 1.0,
                 seed: int = 0) -> Simulation:
    """Gaussian-topic SEM with causal and topic-only nodes (see module docstring)."""
    rng = np.random.default_rng(seed)
    topics, alpha, q, sigma_q = _common(rng, m, d_q, k, confounding)
    nodes, truth, y = [], [], np.zeros(m)
    for c in range(n_causal + n_spurious):
        M = rng.normal(size=(d_n, d_q)) * strength / np.sqrt(d_q)
        causal = c < n_causal
        mean = q @ M.T if causal else alpha[topics] @ M.T
        n = mean + noise * rng.normal(size=(m, d_n))
        C = effect * M.T / np.linalg.norm(M)  # aligned so the interaction is visible
        y += np.einsum("md,de,me->m", q, C, n)
        nodes.append(n)
        truth.append(-np.trace(C @ M @ sigma_q) if causal else 0.0)
    b = rng.normal(size=d_q) * 0.5
    theta = rng.normal(size=k)
    y += q @ b + theta[topics] + rng.normal(size=m)
    names = tuple([f"causal{i}" for i in range(n_causal)] + [f"topic_only{i}" for i in range(n_spurious)])
    return Simulation(q, np.stack(nodes), y, topics, np.asarray(truth), names)


def additive(m: int = 2000, *, d_q: int = 2, d_n: int = 2, k: int = 3, confounding: float = 1.5,
             strength: float = 1.0, seed: int = 0) -> Simulation:
    """``y = sin(q_1) + n_1^2 + theta_x + noise`` with a causal and a topic-only node: every AIE is 0."""
    rng = np.random.default_rng(seed)
    topics, alpha, q, _ = _common(rng, m, d_q, k, confounding)
    M1 = rng.normal(size=(d_n, d_q)) * strength / np.sqrt(d_q)
    M2 = rng.normal(size=(d_n, d_q)) * strength / np.sqrt(d_q)
    n1 = q @ M1.T + rng.normal(size=(m, d_n))
    n2 = alpha[topics] @ M2.T + rng.normal(size=(m, d_n))
    theta = rng.normal(size=k)
    y = np.sin(q[:, 0]) + n1[:, 0] ** 2 + 0.5 * n2[:, 0] + theta[topics] + 0.5 * rng.normal(size=m)
    return Simulation(q, np.stack([n1, n2]), y, topics, np.zeros(2), ("causal0", "topic_only0"))


def nonlinear(m: int = 2000, *, d_q: int = 2, d_n: int = 2, k: int = 3, confounding: float = 1.5,
              strength: float = 1.5, effect: float = 1.0, seed: int = 0, n_mc: int = 400_000) -> Simulation:
    """``n = tanh(W q) + delta_x + eps``, ``y = q^T C n + theta_x + noise``; truth by Monte Carlo."""
    rng = np.random.default_rng(seed)
    topics, alpha, q, _ = _common(rng, m, d_q, k, confounding)
    W = rng.normal(size=(d_n, d_q)) * strength / np.sqrt(d_q)
    delta = rng.normal(size=(k, d_n))
    n = np.tanh(q @ W.T) + delta[topics] + 0.5 * rng.normal(size=(m, d_n))
    C = effect * W.T / np.linalg.norm(W)
    theta = rng.normal(size=k)
    y = np.einsum("md,de,me->m", q, C, n) + theta[topics] + rng.normal(size=m)
    mc = np.random.default_rng(seed + 10_000)
    t = mc.integers(0, k, size=n_mc)
    Q = alpha[t] + mc.normal(size=(n_mc, d_q))
    truth = -np.mean(np.einsum("md,de,me->m", Q - Q.mean(0), C, np.tanh(Q @ W.T)))
    return Simulation(q, n[None], y, topics, np.array([truth]), ("causal0",))
