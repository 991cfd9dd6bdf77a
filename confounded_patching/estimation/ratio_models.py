"""Density-ratio models behind the AIE's cross-world weights.

The estimator of Fotouhi et al. (arXiv 2412.02893) needs two stabilized
weights, read as density ratios:

- ``pi_x(q, x) ~ f(q) / f(q | x)``: the query's dependence on the confounder;
- ``pi_nx(q, z) ~ f(q) / f(q | n, x)`` with ``z = [n, x]``: its dependence on
  the node and the confounder (``pi_n`` with ``z = n`` when unadjusted).

Both are evaluated off the observed pairs, at ``(q_j, z_i)``. Every model
here is log-linear in a common form, so one code path serves entropy
balancing and the parametric models of the paper's Appendix A::

    s(q, z) = -(a(q) + b(z) + q^T U(z)),     pi = m * softmax(s).

A :class:`RatioModel` stores ``a`` at each ``q_i`` ([B, m]), ``U`` at each
``z_i`` ([B, m, d_q]) and ``log pi_i`` ([B, m]) for a batch of ``B``
problems sharing ``q``; ``log_ratio`` returns ``s(q_j, z_i) - s(q_i, z_i)``
for the pairs ``(i, j)``, in which ``b(z_i)`` cancels.

- ``fit_eb``: entropy balancing on ``g(q, z) = [q, q^2 - c, z, q outer z]`` (:mod:`~.features`)
  (Hainmueller 2012; approximate balance with per-problem tolerance on the
  product columns, Wang & Zubizarreta 2020).
- ``fit_gaussian``: ``f(q | z)`` linear-Gaussian, ``f(q)`` Gaussian or a
  topic mixture (Appendix A).
- ``fit_topic_gaussian``: ``f(q | x)`` Gaussian per topic with its own
  covariance, ``f(q)`` their mixture (Appendix A's ``pi_x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .balancer import EntropyBalancer
from .features import FactoredFeatures, centred_squares, feature_layout

__all__ = ["RatioModel", "TopicGaussian", "fit_eb", "fit_gaussian", "fit_topic_gaussian", "gamma_max_products",
           "embed_lambda_x"]


@dataclass
class RatioModel:
    """A batch of log-linear ratio models sharing the treatment ``q`` (see module docstring)."""

    a: torch.Tensor  # [B, m]
    U: torch.Tensor  # [B, m, d_q]
    log_pi: torch.Tensor  # [B, m], log of weights with mean 1
    status: list
    gamma: torch.Tensor  # [B], tolerance on the product columns (nan: parametric)
    ess: torch.Tensor  # [B], (sum w)^2 / sum w^2
    imbalance: torch.Tensor  # [B], ||G^T w||_inf
    n_iter: torch.Tensor  # [B]
    lam: torch.Tensor | None = None  # [B, p] for EB

    def log_ratio(self, q: torch.Tensor, J: torch.Tensor, rows: torch.Tensor | None = None, *,
                  nodes: slice = slice(None), dq: torch.Tensor | None = None) -> torch.Tensor:
        """``s(q_j, z_i) - s(q_i, z_i)`` for ``j = J[i, k]``: ``[m', K, B']`` (prompt-major).

        ``rows`` picks the prompts ``i`` (all by default), ``nodes`` the
        problems; ``dq = q[J[rows]] - q[rows, None]`` may be passed to share
        it between calls.
        """
        rows = torch.arange(q.shape[0], device=q.device) if rows is None else rows
        Jr = J[rows]
        aT = self.a[nodes].to(q.dtype).T  # [m, B']
        if dq is None:
            dq = q[Jr] - q[rows, None, :]  # [m', K, d_q]
        U = self.U[nodes][:, rows].to(q.dtype)  # [B', m', d_q]
        out = torch.baddbmm(aT[Jr] - aT[rows, None, :], dq, U.permute(1, 2, 0))  # da + dq U: [m', K, B']
        return out.neg_()

    def select(self, idx: torch.Tensor) -> "RatioModel":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return RatioModel(self.a[idx], self.U[idx], self.log_pi[idx], [self.status[i] for i in idx.tolist()],
                          self.gamma[idx], self.ess[idx], self.imbalance[idx], self.n_iter[idx], pick(self.lam))


@dataclass
class TopicGaussian:
    """``pi_x(q, x) = f(q) / f(q | x)`` with ``f(q | x)`` Gaussian per topic (B = 1)."""

    log_dens: torch.Tensor  # [m, T]: log N(q_j; mu_t, S_t)
    log_mix: torch.Tensor  # [m]: log f(q_j)
    topic: torch.Tensor  # [m] int
    log_pi: torch.Tensor  # [1, m]
    status: list
    gamma: torch.Tensor
    ess: torch.Tensor
    imbalance: torch.Tensor
    n_iter: torch.Tensor

    def log_ratio(self, q, J, rows=None, *, nodes=slice(None), dq=None):
        rows = torch.arange(q.shape[0], device=q.device) if rows is None else rows
        Jr, t = J[rows], self.topic[rows]
        at_j = self.log_mix[Jr] - self.log_dens[Jr, t[:, None]]
        at_i = self.log_mix[rows] - self.log_dens[rows, t]
        return (at_j - at_i[:, None]).unsqueeze(-1)[..., nodes]


# ----------------------------------------------------------------------------- entropy balancing


def gamma_max_products(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Largest |mean| of the product columns ``q outer z`` per problem: above it, EB weights are uniform."""
    z = z if z.ndim == 3 else z.unsqueeze(0)
    m = q.shape[0]
    return (torch.einsum("md,bme->bde", q, z) / m).abs().flatten(1).amax(-1)


def fit_eb(q, z, gamma, *, squares=True, gamma_marginal=0.0, tol=1e-6, max_iter=None, lambda_init=None, device=None):
    """Entropy-balancing ratio models for ``B`` problems sharing ``q``.

    Args:
        q: standardized treatment ``[m, d_q]``.
        z: standardized covariates ``[B, m, d_z]``.
        gamma: tolerance on the product columns: ``[B]`` (every product) or
            ``[B, d_z]`` (the products ``q outer z_l`` get ``gamma[:, l]``).
        squares: include ``q^2 - mean(q^2)`` in the features.
        gamma_marginal: tolerance on ``q``, ``q^2`` and ``z``.
        lambda_init: warm start ``[B, p]``.
        device: where the solver runs (default: ``q``'s device). Off the
            CPU the solution is re-checked in float64 on the CPU
            (``EntropyBalancer(verify="auto")``); the model is returned on
            ``q``'s device and in its dtype either way.
    """
    B, m, dz = z.shape
    dq = q.shape[1]
    gamma = gamma.to(q.dtype)
    per_z = gamma if gamma.ndim == 2 else gamma[:, None].expand(B, dz)
    lay = feature_layout(dq, dz, squares=squares)
    gam = torch.full((B, lay["qz"].stop), float(gamma_marginal), dtype=q.dtype, device=q.device)
    gam[:, lay["qz"]] = per_z[:, None, :].expand(B, dq, dz).reshape(B, dq * dz)
    eb = EntropyBalancer(gam, tol=tol, max_iter=max_iter, dtype=q.dtype, device=q.device if device is None else device,
                         warn=False)
    eb.fit_factored(q, z, squares=squares, standardize=False, lambda_init=lambda_init)
    return _from_lambda(q, z, eb.lambda_, squares, eb, per_z[:, 0] if gamma.ndim == 2 else gamma)


def embed_lambda_x(lam_x: torch.Tensor, d_q: int, d_n: int, kx: int, *, squares: bool = True) -> torch.Tensor:
    """Place ``pi_x``'s dual ``[p_x]`` (features of ``(q, x)``) into the layout of ``(q, [n, x])``: ``[p]``.

    The node's columns get 0, so the node model starts from ``pi_x``'s
    solution (a warm start for the top of the gamma path).
    """
    lx = feature_layout(d_q, kx, squares=squares)
    lz = feature_layout(d_q, d_n + kx, squares=squares)
    out = torch.zeros(lz["qz"].stop, dtype=lam_x.dtype)
    out[lz["q"]] = lam_x[lx["q"]]
    if squares:
        out[lz["q2"]] = lam_x[lx["q2"]]
    out[lz["z"].start + d_n: lz["z"].stop] = lam_x[lx["z"]]
    qz = out[lz["qz"]].view(d_q, d_n + kx)
    qz[:, d_n:] = lam_x[lx["qz"]].view(d_q, kx)
    return out


def _from_lambda(q, z, lam, squares, eb, gamma):
    B, m, dz = z.shape
    dq = q.shape[1]
    back = lambda t: torch.as_tensor(t).to(q.device, q.dtype)  # noqa: E731  (from the solver's device / dtype)
    lam = back(lam)
    lay = feature_layout(dq, dz, squares=squares)
    a = lam[:, lay["q"]] @ q.T
    if squares:
        a = a + lam[:, lay["q2"]] @ centred_squares(q).T
    Lam = lam[:, lay["qz"]].reshape(B, dq, dz)
    U = torch.bmm(z, Lam.transpose(1, 2))  # U_i = Lam z_i
    w = back(eb.weights_)
    log_pi = torch.log(w.clamp_min(1e-300)) + math.log(m)
    return RatioModel(a, U, log_pi, list(eb.status_), gamma.clone(), back(eb.ess_), back(eb.imbalance_),
                      torch.as_tensor(eb.n_iter_), lam)


# ----------------------------------------------------------------------------- parametric (Appendix A)


def _gauss_logpdf(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) for x [..., m, d], mean broadcastable, cov [..., d, d]."""
    L = torch.linalg.cholesky(cov)
    diff = (x - mean).unsqueeze(-1)
    sol = torch.linalg.solve_triangular(L.unsqueeze(-3), diff, upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    d = x.shape[-1]
    return -0.5 * (sol * sol).sum(-1) - 0.5 * logdet.unsqueeze(-1) - 0.5 * d * math.log(2 * math.pi)


def _ridge_cov(R: torch.Tensor, ridge: float) -> torch.Tensor:
    cov = R.transpose(-1, -2) @ R / R.shape[-2]
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    return cov + ridge * scale[..., None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def _normalize(s: torch.Tensor) -> torch.Tensor:
    return s - torch.logsumexp(s, -1, keepdim=True) + math.log(s.shape[-1])


def _diagnostics(q, z, log_pi, squares):
    w = torch.softmax(log_pi, -1)
    op = FactoredFeatures(q, z, squares)
    imb = op.moments(w).abs().amax(-1)
    return 1.0 / (w * w).sum(-1), imb


def fit_gaussian(q, z, *, log_f_q=None, squares=True, ridge=1e-6):
    """Parametric ratio models: ``f(q | z) = N(A z + b, S)``, ``f(q)`` given or ``N(mean, cov)``.

    Args:
        q: ``[m, d_q]``; z: ``[B, m, d_z]``.
        log_f_q: ``[m]`` log marginal density of ``q_i`` (e.g. a topic
            mixture); default the Gaussian fitted to ``q``.
    """
    B, m, dz = z.shape
    if log_f_q is None:
        qc = q - q.mean(0)
        log_f_q = _gauss_logpdf(q, q.mean(0), _ridge_cov(qc, ridge))
    X = torch.cat([torch.ones(B, m, 1, dtype=q.dtype, device=q.device), z], -1)
    coef = torch.linalg.lstsq(X, q.expand(B, -1, -1)).solution  # [B, 1+dz, dq]
    mu = X @ coef  # [B, m, dq]
    S = _ridge_cov(q - mu, ridge)  # [B, dq, dq]
    P = torch.linalg.inv(S)
    # log pi(q, z) = log f(q) + 1/2 (q - mu)^T P (q - mu) + const  =  -(a + b + q^T U)
    quad = 0.5 * torch.einsum("md,bde,me->bm", q, P, q)
    a = -(log_f_q.unsqueeze(0) + quad)
    U = torch.bmm(mu, P)  # P symmetric: U_i = P mu_i
    s = log_f_q.unsqueeze(0) - _gauss_logpdf(q.unsqueeze(0), mu, S)
    log_pi = _normalize(s)
    ess, imb = _diagnostics(q, z, log_pi, squares)
    nan = torch.full((B,), float("nan"), dtype=q.dtype)
    return RatioModel(a, U, log_pi, ["converged"] * B, nan, ess, imb, torch.zeros(B, dtype=torch.long))


def fit_topic_gaussian(q, topic: torch.Tensor, x, *, squares=True, ridge=1e-6):
    """``pi_x`` from per-topic Gaussians ``N(mu_t, S_t)`` and their mixture ``f(q)``.

    Returns the model and ``log f(q_i)`` (the mixture), which the node models reuse.
    """
    T = int(topic.max()) + 1
    m = q.shape[0]
    log_dens, log_p = [], []
    for t in range(T):
        qt = q[topic == t]
        mean = qt.mean(0)
        log_dens.append(_gauss_logpdf(q, mean, _ridge_cov(qt - mean, ridge)))
        log_p.append(math.log(qt.shape[0] / m))
    log_dens = torch.stack(log_dens, -1)  # [m, T]
    log_mix = torch.logsumexp(log_dens + torch.tensor(log_p, dtype=q.dtype), -1)
    s = log_mix - log_dens[torch.arange(m), topic]
    log_pi = _normalize(s).unsqueeze(0)
    ess, imb = _diagnostics(q, x.unsqueeze(0), log_pi, squares)
    model = TopicGaussian(log_dens, log_mix, topic, log_pi, ["converged"], torch.tensor([float("nan")]), ess, imb,
                          torch.zeros(1, dtype=torch.long))
    return model, log_mix
