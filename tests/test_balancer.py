"""EntropyBalancer: per-column tolerances, batches, invariants, input errors, devices and the float64 re-check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balance import batch, design, node_batch, scipy_reference
from confounded_patching import InputError
from confounded_patching.estimation.balancer import EntropyBalancer
from confounded_patching.estimation.features import balance_features, block_gamma, feature_layout, gamma_max


def test_per_column_gamma_zero_on_marginals_positive_on_products():
    q, z = design(seed=2)
    G = balance_features(q, z)
    gam = block_gamma(2, 3, product=0.05)
    eb = EntropyBalancer(gamma=gam, tol=1e-10).fit(G)
    lay = feature_layout(2, 3)
    mom = G.T @ eb.weights_
    assert eb.status_ == "converged"
    assert np.abs(mom[: lay["z"].stop]).max() <= 1e-9
    assert np.abs(mom[lay["qz"]]).max() <= 0.05 + 1e-9
    lam_ref, w_ref, _ = scipy_reference(G, gam)
    np.testing.assert_allclose(eb.weights_, w_ref, atol=1e-7 / G.shape[0], rtol=1e-6)


def test_batched_shared_query_equals_one_by_one():
    q, _ = design(m=300, d_q=3)
    zs = node_batch(q, 5, coef=0.4, seed=5)
    gam = block_gamma(3, 4, product=0.05)
    batch = EntropyBalancer(gamma=gam, tol=1e-9).fit_factored(q, zs)
    assert batch.weights_.shape == (5, 300)
    for b in range(5):
        one = EntropyBalancer(gamma=gam, tol=1e-9).fit_factored(q, zs[b])
        assert batch.status_[b] == one.status_ == "converged"
        np.testing.assert_allclose(batch.weights_[b], one.weights_, atol=1e-9)


def test_batched_float32_torch_solution_is_certified():
    q, _ = design(m=500, d_q=4)
    rng = np.random.default_rng(6)
    zs = torch.tensor(np.stack([0.3 * q @ rng.normal(size=(4, 5)) + rng.normal(size=(500, 5)) for _ in range(3)]))
    gam = torch.tensor(block_gamma(4, 5, product=0.08))
    eb = EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32).fit_factored(torch.tensor(q), zs)
    assert isinstance(eb.weights_, torch.Tensor) and eb.weights_.dtype == torch.float32
    assert eb.status_ == ["converged"] * 3
    assert float(eb.violation_.max()) <= 1e-4


_settings = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 10_000))
    m = draw(st.integers(40, 120))
    p = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(m, p)) + rng.normal(size=p) * 0.3  # off-centre columns: balancing has work to do
    gamma = draw(st.floats(0.02, 0.3))
    return G, gamma


@_settings
@given(problems())
def test_weights_are_positive_and_sum_to_one(prob):
    G, gamma = prob
    eb = EntropyBalancer(gamma=gamma, tol=1e-9).fit(G)
    if eb.status_ == "converged":
        assert np.all(eb.weights_ > 0)
        assert abs(eb.weights_.sum() - 1) < 1e-12
        assert eb.violation_ <= 1e-8
        assert 1 <= eb.ess_ <= G.shape[0] + 1e-9


@_settings
@given(problems(), st.integers(0, 1000))
def test_row_permutation_permutes_the_weights(prob, seed):
    G, gamma = prob
    perm = np.random.default_rng(seed).permutation(G.shape[0])
    a = EntropyBalancer(gamma=gamma, tol=1e-10).fit(G)
    b = EntropyBalancer(gamma=gamma, tol=1e-10).fit(G[perm])
    assert a.status_ == b.status_
    if a.status_ == "converged":
        np.testing.assert_allclose(b.weights_, a.weights_[perm], atol=1e-8)


@_settings
@given(problems(), st.floats(0.2, 5.0))
def test_scaling_a_column_and_its_gamma_leaves_the_weights(prob, c):
    G, gamma = prob
    gam = np.full(G.shape[1], gamma)
    G2, gam2 = G.copy(), gam.copy()
    G2[:, 0] *= c
    gam2[0] *= c
    a = EntropyBalancer(gamma=gam, tol=1e-10).fit(G)
    b = EntropyBalancer(gamma=gam2, tol=1e-10).fit(G2)
    if a.status_ == b.status_ == "converged":
        np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-7)


@_settings
@given(problems(), st.floats(1.0, 3.0))
def test_lambda_is_zero_at_or_above_gamma_max(prob, factor):
    G, _ = prob
    g = float(gamma_max(G)) * factor
    eb = EntropyBalancer(gamma=g).fit(G)
    assert eb.status_ == "converged"
    assert np.all(eb.lambda_ == 0)
    np.testing.assert_allclose(eb.weights_, 1.0 / G.shape[0])
    assert eb.n_iter_ == 0


@_settings
@given(problems())
def test_caller_arrays_are_not_mutated(prob):
    G, gamma = prob
    gam = np.full(G.shape[1], gamma)
    G0, gam0 = G.copy(), gam.copy()
    EntropyBalancer(gamma=gam).fit(G)
    Gt = torch.tensor(G)
    EntropyBalancer(gamma=gamma).fit(Gt)
    np.testing.assert_array_equal(G, G0)
    np.testing.assert_array_equal(gam, gam0)
    np.testing.assert_array_equal(Gt.numpy(), G0)


@_settings
@given(st.lists(problems(), min_size=2, max_size=4))
def test_batched_dense_equals_one_by_one(probs):
    m = min(G.shape[0] for G, _ in probs)
    p = min(G.shape[1] for G, _ in probs)
    Gs = np.stack([G[:m, :p] for G, _ in probs])
    gam = np.stack([np.full(p, g) for _, g in probs])
    batch = EntropyBalancer(gamma=gam, tol=1e-10).fit(Gs)
    for b in range(len(probs)):
        one = EntropyBalancer(gamma=gam[b], tol=1e-10).fit(Gs[b])
        assert batch.status_[b] == one.status_
        if one.status_ == "converged":
            np.testing.assert_allclose(batch.weights_[b], one.weights_, atol=1e-8)


def test_nan_in_features_names_the_argument():
    G = balance_features(*design())
    G[3, 1] = np.nan
    with pytest.raises(InputError, match=r"G must be finite; received ndarray of shape \(300, 13\) and dtype float64 with NaN or inf entries"):
        EntropyBalancer().fit(G)


def test_gamma_of_wrong_length_is_rejected_with_expected_shape():
    G = balance_features(*design())
    with pytest.raises(InputError, match=r"gamma must be a scalar, a vector of length p = 13"):
        EntropyBalancer(gamma=np.ones(3)).fit(G)


def test_negative_gamma_is_rejected():
    with pytest.raises(InputError, match="gamma must be finite and >= 0"):
        EntropyBalancer(gamma=-0.1).fit(np.random.default_rng(0).normal(size=(20, 2)))


def test_unknown_solver_lists_the_options():
    with pytest.raises(InputError, match=r"solver must be one of \{'auto', 'newton', 'fista'\}; received 'bfgs'"):
        EntropyBalancer(solver="bfgs").fit(np.ones((5, 1)))


def test_mismatched_rows_in_factored_form():
    with pytest.raises(InputError, match="q and z must have the same number of rows"):
        EntropyBalancer().fit_factored(np.ones((10, 2)), np.ones((9, 2)))


_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_verify_rechecks_a_float32_solve_in_float64_on_the_cpu():
    q, zs, gam = batch()
    f32 = EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32, verify=True).fit_factored(q, zs)
    f64 = EntropyBalancer(gamma=gam, tol=1e-4).fit_factored(q, zs)
    assert f32.verified_ and not f64.verified_
    assert f32.weights_.dtype == f32.kkt_.dtype == torch.float64 and f32.weights_.device.type == "cpu"
    assert f32.status_ == f64.status_ == ["converged"] * 3
    assert float(f32.kkt_.max()) <= 1e-4 and float(f32.violation_.max()) <= 1e-4
    np.testing.assert_allclose(f32.weights_.numpy(), f64.weights_.numpy(), rtol=1e-3)


def test_verify_downgrades_a_solve_whose_float64_kkt_conditions_fail(monkeypatch):
    import confounded_patching.estimation.balancer as balancer
    from confounded_patching.estimation.solvers import Solution

    def sloppy(op, gamma, lam, *, max_iter, tol, **_):  # claims convergence at its starting point
        return Solution(lam.clone(), ["converged"] * lam.shape[0], torch.ones(lam.shape[0], dtype=torch.long))

    monkeypatch.setattr(balancer, "newton", sloppy)
    q, zs, gam = batch()
    trusted = EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32, verify=False).fit_factored(q, zs)
    checked = EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32, verify=True).fit_factored(q, zs)
    assert trusted.status_ == ["converged"] * 3  # what the solver said
    assert checked.status_ == ["max_iter"] * 3 and checked.converged_ == [False] * 3
    assert bool((checked.kkt_ > 1e-4).all())


def test_verify_keeps_an_infeasible_status_when_the_float64_certificate_holds():
    G = balance_features(*design())
    G_bad = np.c_[G, G[:, 0] + 0.5, -G[:, 0] + 0.5]
    eb = EntropyBalancer(gamma=0.1, dtype=torch.float32, tol=1e-5, verify=True).fit(G_bad)
    assert eb.verified_ and eb.status_ == "infeasible"


def test_verify_auto_rechecks_only_off_the_cpu():
    from confounded_patching.estimation.balancer import verify_wanted

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not verify_wanted("auto", cpu) and verify_wanted("auto", cuda)
    assert verify_wanted(True, cpu) and not verify_wanted(False, cuda)
    assert EntropyBalancer(gamma=0.1).fit(balance_features(*design())).verified_ is False


def test_device_cpu_is_the_default():
    q, zs, gam = batch(B=2)
    base = EntropyBalancer(gamma=gam, tol=1e-8).fit_factored(q, zs)
    for device in ("cpu", torch.device("cpu")):
        eb = EntropyBalancer(gamma=gam, tol=1e-8, device=device).fit_factored(q, zs)
        assert torch.equal(eb.weights_, base.weights_) and eb.status_ == base.status_


@_NO_CUDA
def test_cuda_requested_without_a_gpu_is_a_clear_error():
    with pytest.raises(InputError, match=r"device='cuda' asks for a CUDA GPU, but torch.cuda.is_available\(\) is "
                                         r"False .*use device='cpu'"):
        EntropyBalancer(gamma=0.1, device="cuda").fit(balance_features(*design()))


def test_unknown_device_verify_and_dtype_name_the_options():
    G = balance_features(*design())
    for bad in ("tpu", 3, "cuda:x"):
        with pytest.raises(InputError, match=r"device must be None \(CPU\), 'cpu', 'cuda', 'cuda:N', 'mps' or a "
                                             r"torch.device; received"):
            EntropyBalancer(device=bad).fit(G)
    with pytest.raises(InputError, match=r"verify must be 'auto', True or False; received 'yes'"):
        EntropyBalancer(verify="yes").fit(G)
    with pytest.raises(InputError, match=r"dtype must be a torch floating dtype .*; received torch.int64"):
        EntropyBalancer(dtype=torch.int64).fit(G)


def test_global_tf32_and_matmul_precision_settings_are_left_alone():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    q, zs, gam = batch(B=2)
    EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32, verify=True, device="cpu").fit_factored(q, zs)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision()) == before


@_CUDA
def test_cuda_solve_is_rechecked_in_float64_and_matches_the_cpu():
    q, zs, gam = batch()
    cpu = EntropyBalancer(gamma=gam, tol=1e-4).fit_factored(q, zs)
    gpu = EntropyBalancer(gamma=gam, tol=1e-4, dtype=torch.float32, device="cuda").fit_factored(q, zs)
    assert gpu.verified_ and gpu.weights_.device.type == "cpu" and gpu.weights_.dtype == torch.float64
    assert gpu.status_ == cpu.status_ == ["converged"] * 3
    np.testing.assert_allclose(gpu.weights_.numpy(), cpu.weights_.numpy(), rtol=1e-3)


def test_stopping_at_max_iter_warns_and_warn_false_silences_it():
    import warnings

    from confounded_patching.estimation.balancer import ConvergenceWarning

    rng = np.random.default_rng(3)
    G = rng.normal(size=(300, 6)) + 0.5
    with pytest.warns(ConvergenceWarning, match=r"EntropyBalancer: stopped at max_iter = 2 iterations without meeting "
                                                r"tol = 1e-12 \(KKT residual .*\); the weights do not balance"):
        eb = EntropyBalancer(0.0, max_iter=2, tol=1e-12).fit(G)
    assert eb.status_ == "max_iter"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EntropyBalancer(0.0, max_iter=2, tol=1e-12, warn=False).fit(G)
        EntropyBalancer(0.0).fit(G)  # converged: no warning
    with pytest.warns(ConvergenceWarning, match=r"2 of 2 problems stopped at max_iter"):
        EntropyBalancer(0.0, max_iter=2, tol=1e-12).fit(np.stack([G, G[::-1]]))


def test_features_near_the_float64_limits_do_not_fail_silently():
    """``G * 1e30`` cannot be balanced to an absolute tol of 1e-8: the status says so and a warning is issued."""
    from confounded_patching.estimation.balancer import ConvergenceWarning

    rng = np.random.default_rng(4)
    G = rng.normal(size=(200, 4)) + 0.3
    with pytest.warns(ConvergenceWarning):
        eb = EntropyBalancer(0.0).fit(G * 1e30)
    assert eb.status_ in ("max_iter", "infeasible") or eb.imbalance_ <= 1e-8


def test_half_precision_features_are_solved_in_float64_and_a_half_solver_is_refused():
    rng = np.random.default_rng(5)
    G = (rng.normal(size=(300, 5)) + 0.4).astype(np.float16)
    eb16 = EntropyBalancer(0.0).fit(G)
    eb64 = EntropyBalancer(0.0).fit(G.astype(np.float64))
    assert eb16.status_ == "converged" and eb16.weights_.dtype == np.float64
    np.testing.assert_array_equal(eb16.weights_, eb64.weights_)
    ebt = EntropyBalancer(0.0).fit(torch.from_numpy(G).to(torch.bfloat16))
    assert ebt.status_ == "converged" and ebt.weights_.dtype == torch.float64
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(InputError, match=rf"dtype must be torch.float32 or torch.float64; received {dt}: half "
                                             r"precision keeps about 3 significant digits.*no CPU Cholesky"):
            EntropyBalancer(0.0, dtype=dt).fit(G)
