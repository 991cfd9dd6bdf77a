"""``EntropyBalancer``: entropy-balancing weights, exact and approximate, batched in torch.

Entropy balancing (Hainmueller 2012) finds the weights ``w`` on the simplex
closest to uniform in entropy such that the weighted column means of a
feature matrix ``G`` vanish; approximate balance (Wang & Zubizarreta 2020)
lets column ``k`` be off by at most ``gamma[k]``. The estimator follows
scikit-learn's contract: ``__init__`` stores parameters, ``fit`` validates,
solves (:mod:`~.solvers`) and sets the fitted attributes, and returns
``self``. ``fit(G)`` takes the features as a matrix; ``fit_factored(q, z)``
balances ``g(q, z) = [q, q^2 - mean(q^2), z, q outer z]`` without building
it (:mod:`~.features`).

Every solution is certified: ``imbalance_`` (sup-norm of ``G^T w``), the
duality gap ``gap_ = sum_k gamma_k |lam_k| - lam_k (G^T w)_k`` and the KKT
residual; infeasible problems get status ``"infeasible"`` from the dual
certificate. For ``gamma_k >= |mean_i G_ik|`` for all k the answer is
``lam = 0`` (uniform weights). Solves off the CPU are re-checked in float64
on the CPU (``verify``).

Example::

    >>> G = balance_features(q, z)                  # [m, p] numpy
    >>> eb = EntropyBalancer(gamma=0.0).fit(G)
    >>> eb.weights_.sum(), eb.status_, eb.imbalance_
    (1.0, 'converged', 3e-09)
    >>> eb = EntropyBalancer(gamma=block_gamma(25, 27, product=0.05)).fit_factored(q, zs)  # zs [B, m, 27]
    >>> eb.weights_.shape, eb.status_[:2]
    ((B, m), ['converged', 'converged'])

References: Hainmueller (2012) Political Analysis 20:25-46; Wang &
Zubizarreta (2020) Biometrika 107:93-105.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import InputError, describe
from ..validation import as_float_tensor, check_auto_bool, check_choice, resolve_device
from .features import DenseFeatures, FactoredFeatures
from .linalg import standardize_columns
from .solvers import Solution, certificate, fista, kkt_residual, newton, with_offset

__all__ = ["EntropyBalancer", "ConvergenceWarning", "check_solver_dtype", "verify_wanted", "MAX_ITER_NEWTON",
           "MAX_ITER_FISTA"]

MAX_ITER_NEWTON = 200  # default iteration caps of the two solvers
MAX_ITER_FISTA = 5000
SOLVERS = ["auto", "newton", "fista"]


class ConvergenceWarning(UserWarning):
    """An entropy-balancing solve stopped at its iteration cap without meeting its tolerance."""


def check_solver_dtype(name: str, dtype) -> None:
    """Raise :class:`InputError` unless ``dtype`` is ``torch.float32`` or ``torch.float64``.

    Half precision (float16, bfloat16) is refused with the reason: it keeps 3 significant digits, so
    the balance conditions cannot be met to any useful tolerance, and torch has no CPU Cholesky for it.
    Half-precision *inputs* are accepted everywhere and converted to the solver's dtype.
    """
    if dtype in (torch.float16, torch.bfloat16):
        raise InputError(f"{name} must be torch.float32 or torch.float64; received {dtype}: half precision keeps "
                         "about 3 significant digits, too few to meet the balance tolerances, and torch has no "
                         "CPU Cholesky for it. Pass float16/bfloat16 arrays as inputs instead: they are converted")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"{name} must be a torch floating dtype (torch.float32 or torch.float64); "
                         f"received {describe(dtype)}")


class EntropyBalancer:
    """Entropy-balancing weights whose weighted feature means vanish (within ``gamma``).

    scikit-learn style: ``__init__`` stores parameters, ``fit`` validates,
    solves and sets the fitted attributes, and returns ``self``.

    Args:
        gamma: tolerance on ``|(G^T w)_k|``: a scalar for every column, a
            vector ``[p]`` per column, or ``[B, p]`` per problem and column.
            ``0`` is exact balance (Hainmueller 2012); ``> 0`` is approximate
            balance (Wang & Zubizarreta 2020).
        max_iter: iteration cap: Newton steps, or FISTA iterations with
            ``solver="fista"`` (None: 200 and 5000).
        tol: stop when the KKT residual (the gradient's sup-norm for gamma =
            0) is at most ``tol``.
        device: where to solve: None (where the input is; the CPU for
            numpy), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
            A GPU that torch does not see raises :class:`InputError`.
        dtype: solver precision (float64 by default).
        solver: ``"auto"`` or ``"newton"`` (working-set Newton, for any
            gamma) or ``"fista"`` (first order; many cheap iterations, slow
            on ill-conditioned features).
        warn: issue a :class:`ConvergenceWarning` when a problem stops at
            ``max_iter`` without meeting ``tol`` (the library's own
            estimators turn it off and report the status per node instead).
        verify: re-check the solution in float64 on the CPU and set
            ``status_`` from that check: ``"auto"`` (default) does so when
            the solve ran off the CPU, where float32 and TF32 matmuls can blur
            the optimality conditions; ``True`` always; ``False`` never.
            torch's global TF32 and matmul-precision settings are never
            changed.

    Attributes (after ``fit``; per problem for batched input):
        weights_: weights summing to one, ``[m]`` or ``[B, m]`` (numpy if
            the input was numpy, else torch).
        lambda_: dual solution, ``[p]`` or ``[B, p]``.
        status_: ``"converged"`` (KKT residual at most ``tol``),
            ``"max_iter"`` (stopped without meeting ``tol``: the iteration cap,
            or a verified solve whose float64 KKT residual exceeds ``tol``) or
            ``"infeasible"`` (the dual certificate holds) — a list for batches.
            Infeasible problems' weights are those at the last iterate and
            must not be used.
        n_iter_: iterations used.
        imbalance_: ``||G^T w||_inf``.
        violation_: ``max_k (|(G^T w)_k| - gamma_k)_+``.
        gap_: duality gap ``sum_k gamma_k |lam_k| - lam_k (G^T w)_k``.
        ess_: effective sample size ``(sum w)^2 / sum w^2``.
        converged_: ``status_ == "converged"``.
        kkt_: KKT residual of ``lambda_`` (sup-norm of the minimal
            subgradient of the dual; 0 at the optimum).
        verified_: whether the attributes come from the float64 CPU re-check
            (then every array attribute is float64 on the CPU).
    """

    def __init__(self, gamma=0.0, *, max_iter: int | None = None, tol: float = 1e-8, device=None,
                 dtype=torch.float64, solver: str = "auto", verify="auto", warn: bool = True):
        self.gamma = gamma
        self.warn = warn
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.solver = solver
        self.verify = verify

    # -- public --------------------------------------------------------------

    def fit(self, G, *, base_weights=None, lambda_init=None):
        """Balance the columns of ``G`` (``[m, p]`` or batched ``[B, m, p]``). Returns ``self``.

        ``base_weights`` (positive, ``[m]`` or ``[B, m]``) replaces the
        uniform reference: the weights minimise the KL divergence to them
        (``w_i ~ base_i exp(-lam^T g_i)``). ``lambda_init`` (``[p]`` or
        ``[B, p]``) warm-starts the solver, e.g. from the previous point of a
        gamma path.
        """
        self._check_params()
        Gt = as_float_tensor("G", G, dtype=self.dtype, device=self._device, ndims=(2, 3))
        batched = Gt.ndim == 3
        Gt = Gt if batched else Gt.unsqueeze(0)
        if Gt.shape[1] < 2:
            raise InputError(f"G must have at least 2 rows; received {describe(G)}")
        offset = None
        if base_weights is not None:
            bw = as_float_tensor("base_weights", base_weights, dtype=self.dtype, device=self._device, ndims=(1, 2))
            bw = bw if bw.ndim == 2 else bw.unsqueeze(0)
            if bw.shape[-1] != Gt.shape[1] or bw.shape[0] not in (1, Gt.shape[0]) or bool((bw <= 0).any()):
                raise InputError(f"base_weights must be positive with one entry per row of G ({Gt.shape[1]}); "
                                 f"received {describe(base_weights)}")
            offset = torch.log(bw).expand(Gt.shape[0], -1).contiguous()
        op = DenseFeatures(Gt, offset)
        return self._solve(op, batched, numpy_out=not isinstance(G, torch.Tensor), lambda_init=lambda_init)

    def fit_factored(self, q, z, *, squares: bool = True, standardize: bool = True, lambda_init=None):
        """Balance ``g(q, z) = [q, q^2 - mean(q^2), z, q outer z]`` without building it.

        Args:
            q: treatment ``[m, d_q]`` shared by all problems, or ``[B, m, d_q]``.
            z: covariates ``[m, d_z]`` (one problem) or ``[B, m, d_z]``.
            squares: include the centred squares of ``q``.
            standardize: centre and scale ``q`` and ``z`` per problem first
                (as ``balance_features`` does).

        The column order, and so the layout of ``gamma`` and ``lambda_``, is
        ``feature_layout(d_q, d_z, squares=squares)``. ``lambda_init``
        warm-starts the solver. Returns ``self``.
        """
        self._check_params()
        qt = as_float_tensor("q", q, dtype=self.dtype, device=self._device, ndims=(2, 3))
        zt = as_float_tensor("z", z, dtype=self.dtype, device=self._device, ndims=(2, 3))
        batched = zt.ndim == 3 or qt.ndim == 3
        if zt.ndim == 2:
            zt = zt.unsqueeze(0)
        if qt.ndim == 3 and zt.shape[0] == 1 and qt.shape[0] > 1:
            zt = zt.expand(qt.shape[0], -1, -1)
        if qt.shape[-2] != zt.shape[-2]:
            raise InputError(f"q and z must have the same number of rows; received {describe(q)} and {describe(z)}")
        if qt.ndim == 3 and qt.shape[0] != zt.shape[0]:
            raise InputError(f"q and z must have the same batch size; received {describe(q)} and {describe(z)}")
        if standardize:
            qt, zt = (standardize_columns(t, eps=1e-12, relative_to="mean") for t in (qt, zt))
        op = FactoredFeatures(qt, zt, squares)
        return self._solve(op, batched, numpy_out=not isinstance(z, torch.Tensor), lambda_init=lambda_init)

    # -- internals -----------------------------------------------------------

    def _check_params(self):
        # None: solve where the input lives (validated device otherwise); the parameter itself is not modified
        self._device = None if self.device is None else resolve_device(self.device)
        check_auto_bool("verify", self.verify)
        check_solver_dtype("dtype", self.dtype)
        if not isinstance(self.warn, bool):
            raise InputError(f"warn must be True or False; received {describe(self.warn)}")
        check_choice("solver", self.solver, SOLVERS)
        if self.max_iter is not None and not (isinstance(self.max_iter, int) and not isinstance(self.max_iter, bool)
                                              and self.max_iter >= 1):
            raise InputError(f"max_iter must be None or a positive int; received {describe(self.max_iter)}")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise InputError(f"tol must be a positive number; received {describe(self.tol)}")

    def _gamma(self, B: int, p: int, device) -> torch.Tensor:
        g = self.gamma
        gt = g.detach() if isinstance(g, torch.Tensor) else torch.as_tensor(np.asarray(g, dtype=np.float64))
        gt = gt.to(device=device, dtype=self.dtype)
        if gt.ndim == 0:
            gt = gt.expand(B, p)
        elif gt.ndim == 1 and gt.shape[0] == p:
            gt = gt.expand(B, p)
        elif not (gt.ndim == 2 and tuple(gt.shape) == (B, p)):
            raise InputError(f"gamma must be a scalar, a vector of length p = {p} or an array [B, p] = [{B}, {p}]; "
                             f"received {describe(g)}")
        if not torch.isfinite(gt).all() or bool((gt < 0).any()):
            raise InputError(f"gamma must be finite and >= 0; received {describe(g)} with negative or non-finite entries")
        return gt.contiguous()

    def _solve(self, op, batched: bool, numpy_out: bool, lambda_init=None):
        dev = _device_of(op)  # where the features are: self.device, else where the input was
        gamma = self._gamma(op.B, op.p, dev)
        lam0 = torch.zeros(op.B, op.p, dtype=self.dtype, device=dev)
        if lambda_init is not None:
            li = as_float_tensor("lambda_init", lambda_init, dtype=self.dtype, device=dev, ndims=(1, 2))
            if li.shape[-1] != op.p or (li.ndim == 2 and li.shape[0] != op.B):
                raise InputError(f"lambda_init must have shape [{op.p}] or [{op.B}, {op.p}]; received {describe(lambda_init)}")
            lam0 = lam0 + li
        use_newton = self.solver in ("auto", "newton")
        max_iter = self.max_iter if self.max_iter is not None else (MAX_ITER_NEWTON if use_newton else MAX_ITER_FISTA)
        # lam = 0 is optimal where uniform weights already satisfy every tolerance
        w0 = torch.softmax(with_offset(op, torch.zeros(op.B, op.m, dtype=self.dtype, device=dev)), -1)
        trivial = ((op.moments(w0).abs() - gamma) <= 1e-12 * (1 + gamma)).all(-1)
        sol = Solution(torch.where(trivial[:, None], torch.zeros_like(lam0), lam0),
                        ["converged"] * op.B, torch.zeros(op.B, dtype=torch.long))
        todo = torch.nonzero(~trivial).flatten()
        if todo.numel():
            sub = op.subset(todo)
            solve = newton if use_newton else fista
            s = solve(sub, gamma[todo], lam0[todo], max_iter=max_iter, tol=self.tol)
            sol.lam[todo] = s.lam
            for k, i in enumerate(todo.tolist()):
                sol.status[i] = s.status[k]
            sol.n_iter[todo.cpu()] = s.n_iter
        self.verified_ = verify_wanted(self.verify, dev)
        if self.verified_:
            op, sol, gamma = _verify(op, sol, gamma, self.tol)
        self._set_attributes(op, sol, gamma, batched, numpy_out)
        stuck = sum(st == "max_iter" for st in sol.status)
        if stuck and self.warn:
            which = "" if not batched else f"{stuck} of {op.B} problems "
            warnings.warn(f"EntropyBalancer: {which}stopped at max_iter = {max_iter} iterations without meeting "
                          f"tol = {self.tol:g} (KKT residual {float(np.max(np.atleast_1d(self.kkt_))):.3g}); the "
                          "weights do not balance the features to the requested tolerance. Raise max_iter, loosen "
                          "gamma, or rescale the features (see status_, kkt_, imbalance_)",
                          ConvergenceWarning, stacklevel=3)
        return self

    def _set_attributes(self, op, sol, gamma, batched, numpy_out):
        s = with_offset(op, op.scores(sol.lam))
        w = torch.softmax(s, dim=-1)
        mom = op.moments(w)
        conv = lambda t: t.cpu().numpy() if numpy_out else t  # noqa: E731
        pick = (lambda t: t) if batched else (lambda t: t[0])
        self.weights_ = conv(pick(w))
        self.lambda_ = conv(pick(sol.lam))
        self.status_ = sol.status if batched else sol.status[0]
        self.n_iter_ = sol.n_iter.numpy() if batched else int(sol.n_iter[0])
        self.imbalance_ = conv(pick(mom.abs().amax(-1)))
        self.violation_ = conv(pick((mom.abs() - gamma).clamp_min(0).amax(-1)))
        self.gap_ = conv(pick((gamma * sol.lam.abs() - sol.lam * mom).sum(-1)))
        self.ess_ = conv(pick(1.0 / (w * w).sum(-1)))
        self.moments_ = conv(pick(mom))
        self.kkt_ = conv(pick(kkt_residual(-mom, sol.lam, gamma)))
        self.converged_ = [st == "converged" for st in sol.status] if batched else sol.status[0] == "converged"
        self.gamma_ = conv(pick(gamma))
        self.n_features_ = op.p


def verify_wanted(verify, device: torch.device) -> bool:
    """``verify=True``, or ``"auto"`` off the CPU."""
    return verify is True or (verify == "auto" and torch.device(device).type != "cpu")


def _device_of(op) -> torch.device:
    return (op.G if isinstance(op, DenseFeatures) else op.z).device


def _verify(op, sol: Solution, gamma: torch.Tensor, tol: float):
    """Re-check a solution in float64 on the CPU: statuses from the float64 KKT residual and dual certificate.

    A solve in float32 (or with TF32 matmuls on a GPU) may stop where its
    own arithmetic says the KKT conditions hold when they do not, or miss
    that they do. Here ``converged`` means the float64 KKT residual is at
    most ``tol``; otherwise ``infeasible`` where the float64 certificate
    holds, else ``max_iter``. Returns the float64 CPU operator, solution
    and tolerances, from which the fitted attributes are then computed.
    """
    cpu, f64 = torch.device("cpu"), torch.float64
    op64 = op.to(cpu, f64)
    lam = sol.lam.to(cpu, f64)
    gam = gamma.to(cpu, f64)
    s = op64.scores(lam)
    w = torch.softmax(with_offset(op64, s), dim=-1)
    kkt = kkt_residual(-op64.moments(w), lam, gam)
    infeasible = certificate(s, lam, gam)
    status = ["converged" if bool(k <= tol) else "infeasible" if bool(c) else "max_iter"
              for k, c in zip(kkt, infeasible)]
    return op64, Solution(lam, status, sol.n_iter.cpu()), gam
