"""The AIE estimator against planted truth, its variants, its results and its input errors.

Designs (``confounded_patching.simulate``): a Gaussian-topic SEM whose AIE
is ``-tr(C B Sigma_Q)`` for a causal node and 0 for a topic-only node; an
additive outcome (AIE 0 for every node); a randomised query. Low
dimensions (d = 2) keep each fit to about a second; ``docs/estimator.md``
reports the high-dimensional behaviour. Seeds were picked by the size of
the planted truth (the first seed from 100 with a moderate AIE, -0.9 to
-0.5), not by the estimate: for large effects even the estimator with the
true densities is shrunk at m = 2000 (docs/estimator.md).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from confounded_patching import InputError
from confounded_patching.estimation import simulate as S
from confounded_patching.estimation.aie import AIEResult, AIETable, aie, aie_many
from confounded_patching.estimation.options import AIEOptions
from confounded_patching.estimation.partners import pair_index
from simulations import FAST, quiet, sem, sem_strong, sem_table  # noqa: F401  (fixtures)


def test_adjusted_aie_recovers_the_causal_node_and_zeroes_the_topic_only_node(sem, sem_table):
    causal, topic_only = sem_table[0], sem_table[1]
    truth = sem.truth[0]
    assert truth < -0.5
    assert causal.status == "converged" and causal.status_x == "converged"
    # the estimator is shrunk toward 0 by regularisation; in d = 2 by about 20% (docs/estimator.md)
    assert abs(causal.value - truth) < 0.3 * abs(truth)
    assert causal.ci_high < 0
    assert abs(topic_only.value) < 0.05


def test_unadjusted_estimator_reports_the_topic_only_node_the_adjusted_one_does_not(sem_strong):
    adj = quiet(aie_many, sem_strong.query, sem_strong.nodes, sem_strong.outcome, sem_strong.topics, **FAST)
    raw = aie_many(sem_strong.query, sem_strong.nodes, sem_strong.outcome, None, **FAST)
    assert sem_strong.truth[1] == 0
    assert abs(adj.value[1]) < 0.06
    assert abs(raw.value[1]) > 0.2
    assert raw.ci_high[1] < 0 or raw.ci_low[1] > 0  # the unadjusted interval excludes the true 0
    assert not raw.adjusted and raw.status_x == "none"


def test_additive_outcome_has_zero_aie_for_every_node():
    sim = S.additive(m=2000, d_q=2, d_n=2, confounding=0.5, seed=103)
    table = quiet(aie_many, sim.query, sim.nodes, sim.outcome, sim.topics, **FAST)
    np.testing.assert_array_less(np.abs(table.value), 0.06)


def test_randomized_query_adjusted_agrees_with_unadjusted():
    sim = S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=0.5, confounding=0.0, seed=102)
    adj = aie_many(sim.query, sim.nodes, sim.outcome, sim.topics, **FAST)
    raw = aie_many(sim.query, sim.nodes, sim.outcome, None, **FAST)
    assert adj.ess_x > 0.9 * adj.n  # pi_x is nearly uniform when q does not depend on x
    np.testing.assert_allclose(adj.value, raw.value, atol=0.06)
    assert abs(adj.value[0] - sim.truth[0]) < 0.3 * abs(sim.truth[0])


def test_eq2_is_closer_to_the_truth_than_the_papers_algorithm1(sem):
    kw = dict(FAST, estimator="ht", gamma=0.05, gamma_x=0.05, n_boot=0)
    eq2 = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, **kw)
    alg1 = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, variant="algorithm1", **kw)
    truth = sem.truth[0]
    assert abs(alg1.value - truth) > 2 * abs(eq2.value - truth)


def test_squares_in_the_features_remove_the_papers_bias_under_exact_balance():
    # scalar SEM, exact balance: the setting where the paper's g = [q, z, q z] is biased
    sim = S.gaussian_sem(m=8000, d_q=1, d_n=1, strength=0.7, confounding=0.5, n_spurious=0, seed=105)
    kw = dict(d_q=1, d_n=1, K=50, n_boot=0, gamma=0.0, gamma_x=0.0, calibrate=False)
    sq = aie(sim.query, sim.nodes[0], sim.outcome, sim.topics, features="squares", **kw)
    paper = aie(sim.query, sim.nodes[0], sim.outcome, sim.topics, features="paper", **kw)
    truth = sim.truth[0]
    assert abs(sq.value - truth) < 0.1 * abs(truth)
    assert abs(paper.value - truth) > 2 * abs(sq.value - truth)


def test_parametric_weights_of_appendix_a_recover_the_truth_in_low_dimension(sem):
    r = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, weights="parametric", **FAST)
    assert np.isnan(r.gamma) and r.weights == "parametric"
    assert abs(r.value - sem.truth[0]) < 0.3 * abs(sem.truth[0])


def test_uniform_weights_give_exactly_zero_unadjusted_aie(sem):
    r = aie(sem.query, sem.nodes[0], sem.outcome, None, gamma=1e3, augment=False, **FAST)
    assert r.value == pytest.approx(0.0, abs=1e-12) and r.ess == pytest.approx(r.n)


def test_augmented_aie_under_uniform_weights_is_the_outcome_models_regression_estimate(sem):
    """With uniform weights the balancing term vanishes and only the outcome model's plug-in is left."""
    from confounded_patching.estimation.node_coords import coords
    from confounded_patching.estimation.outcome_model import fit_outcome

    r = aie(sem.query, sem.nodes[0], sem.outcome, None, gamma=1e3, calibrate=False, **dict(FAST, n_boot=0))
    q = coords(torch.from_numpy(sem.query), 2, 0)
    n = coords(torch.from_numpy(sem.nodes[0]), 2, 0)[None]
    J = torch.from_numpy(pair_index(len(sem.outcome), FAST["K"], 0))
    h, P = fit_outcome(q, n, None, torch.from_numpy(sem.outcome), J)
    assert r.augmented and r.value == pytest.approx(float(P.mean() - h.mean()), abs=1e-10)
    assert abs(r.value - sem.truth[0]) < 0.35 * abs(sem.truth[0])  # the outcome is linear in the features


def test_adjusted_aie_is_zero_when_the_node_model_is_unconstrained(sem):
    """With the node's products free, R^nx must cancel R^x: pi_nx's topic products share pi_x's gamma."""
    for est in ("ht", "hajek"):
        r = aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, gamma=1e3, estimator=est, calibrate=False,
                     augment=False, **dict(FAST, n_boot=0))
        np.testing.assert_array_less(np.abs(r.value), 0.02)


def test_hajek_is_invariant_to_shifting_the_outcome_and_ht_is_not(sem):
    kw = dict(FAST, n_boot=0, gamma=0.1, gamma_x=0.1)
    h1 = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, estimator="hajek", **kw)
    h2 = aie(sem.query, sem.nodes[0], sem.outcome + 10.0, sem.topics, estimator="hajek", **kw)
    t1 = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, estimator="ht", **kw)
    t2 = aie(sem.query, sem.nodes[0], sem.outcome + 10.0, sem.topics, estimator="ht", **kw)
    assert h2.value == pytest.approx(h1.value, abs=1e-9)
    assert abs(t2.value - t1.value) > 1e-3


def test_all_nodes_share_the_pairs_so_batching_does_not_change_any_node(sem, sem_table):
    one = aie(sem.query, sem.nodes[1], sem.outcome, sem.topics, dtype=torch.float32, **FAST)
    assert one.value == pytest.approx(sem_table.value[1], abs=1e-6)
    J = pair_index(2000, 100, seed=0)
    explicit = aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, pairs=J, **FAST)
    np.testing.assert_allclose(explicit.value, sem_table.value, atol=1e-12)


def test_bootstrap_replicates_are_shared_across_nodes(sem_table):
    assert sem_table.boot.shape == (2, 200)
    assert np.all(sem_table.ci_low <= sem_table.value) and np.all(sem_table.value <= sem_table.ci_high)
    np.testing.assert_allclose(sem_table.se, sem_table.boot.std(1, ddof=1))


def test_infeasible_balance_gives_nan_and_says_so():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(600, 2))
    node = np.c_[q[:, 0] + 1e-2 * rng.normal(size=600), rng.normal(size=600)]  # n is (almost) q itself
    y = q[:, 0] * node[:, 0] + rng.normal(size=600)
    r = aie(q, node, y, None, gamma=0.0, d_q=2, d_n=2, K=50, n_boot=10)
    assert r.status == "infeasible"
    assert np.isnan(r.value) and np.isnan(r.ci_low)


def test_winsorizing_clips_the_stated_share_of_terms(sem):
    r = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, estimator="ht", winsorize=0.05, **FAST)
    assert r.winsorized == pytest.approx(0.10, abs=0.01)
    r0 = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, estimator="ht", winsorize=None, **FAST)
    assert r0.winsorized == 0.0


def test_results_round_trip_through_save_and_load(tmp_path, sem_table):
    path = sem_table.save(tmp_path / "table")
    back = AIETable.load(path)
    np.testing.assert_array_equal(back.value, sem_table.value)
    assert back.status == sem_table.status and back.gamma_rule == sem_table.gamma_rule
    one = sem_table[0]
    back1 = AIEResult.load(one.save(tmp_path / "one.npz"))
    assert back1 == one


def test_dataframe_has_one_row_per_node_with_diagnostics(sem_table):
    df = sem_table.to_dataframe(nodes=["causal", "topic_only"])
    assert list(df["node"]) == ["causal", "topic_only"]
    for col in ("value", "ci_low", "ci_high", "gamma", "ess", "pair_ess", "imbalance", "status", "winsorized",
                "gamma_x", "ess_x"):
        assert col in df.columns


def test_mismatched_lengths_name_the_argument(sem):
    with pytest.raises(InputError, match=r"query must have one row per prompt \(2000, the length of outcome\); "
                                         r"received ndarray of shape \(1999, 2\)"):
        aie(sem.query[:-1], sem.nodes[0], sem.outcome)
    with pytest.raises(InputError, match=r"confounder must have one entry per prompt \(2000\)"):
        aie(sem.query, sem.nodes[0], sem.outcome, sem.topics[:10])


def test_nan_and_inf_are_rejected(sem):
    bad = sem.nodes[0].copy()
    bad[5, 0] = np.nan
    with pytest.raises(InputError, match="nodes\\[0\\] must be finite"):
        aie(sem.query, bad, sem.outcome, **FAST)
    q = sem.query.copy()
    q[0, 0] = np.inf
    with pytest.raises(InputError, match="query must be finite"):
        aie(q, sem.nodes[0], sem.outcome, **FAST)


def test_constant_outcome_is_rejected(sem):
    with pytest.raises(InputError, match="outcome must vary across prompts; received a constant vector of length"):
        aie(sem.query, sem.nodes[0], np.ones(2000))


def test_single_topic_is_rejected(sem):
    with pytest.raises(InputError, match=r"confounder must contain at least 2 distinct topics; received 1"):
        aie(sem.query, sem.nodes[0], sem.outcome, np.zeros(2000, dtype=int))


def test_fewer_prompts_than_the_dimensions_need_is_rejected():
    rng = np.random.default_rng(2)
    with pytest.raises(InputError, match=r"need at least 2 \* \(2 d_q \+ d_z\) \+ 10 = 160 prompts .* received 100"):
        aie(rng.normal(size=(100, 50)), rng.normal(size=(100, 40)), rng.normal(size=100), d_q=25, d_n=25)


def test_unknown_options_list_the_valid_ones(sem):
    with pytest.raises(InputError, match=r"variant must be one of .*'eq2'.*; received 'eq3'"):
        aie(sem.query, sem.nodes[0], sem.outcome, variant="eq3")
    with pytest.raises(InputError, match="estimator must be 'ht'"):
        aie(sem.query, sem.nodes[0], sem.outcome, variant="algorithm1", estimator="hajek")
    with pytest.raises(InputError, match="gamma must be 'auto' or a number >= 0; received -1"):
        aie(sem.query, sem.nodes[0], sem.outcome, gamma=-1)


def test_several_nodes_passed_to_aie_point_to_aie_many(sem):
    with pytest.raises(InputError, match="Use aie_many for several nodes"):
        aie(sem.query, sem.nodes, sem.outcome)


def test_device_cpu_gives_the_default_table(sem, sem_table):
    on_cpu = aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, device="cpu", **FAST)
    np.testing.assert_array_equal(on_cpu.value, sem_table.value)
    assert on_cpu.status == sem_table.status


def test_solves_rechecked_in_float64_feed_the_estimator_unchanged(sem, sem_table, monkeypatch):
    """What a GPU solve goes through (float64 CPU re-check, results cast back), without a GPU."""
    import confounded_patching.estimation.balancer as balancer

    monkeypatch.setattr(balancer, "verify_wanted", lambda verify, device: True)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    checked = aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, **FAST)
    assert checked.status == sem_table.status and checked.status_x == sem_table.status_x
    np.testing.assert_allclose(checked.value, sem_table.value, rtol=1e-4, atol=1e-6)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_rejected_before_any_work(sem):
    for fn, node in ((aie_many, sem.nodes), (aie, sem.nodes[0])):
        with pytest.raises(InputError, match=r"device='cuda' asks for a CUDA GPU, but torch.cuda.is_available\(\)"):
            fn(sem.query, node, sem.outcome, sem.topics, device="cuda", **FAST)
    with pytest.raises(InputError, match=r"device must be None \(CPU\), 'cpu', 'cuda'.*; received 'gpu'"):
        aie(sem.query, sem.nodes[0], sem.outcome, device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_solves_agree_with_the_cpu(sem, sem_table):
    gpu = quiet(aie_many, sem.query, sem.nodes, sem.outcome, sem.topics, device="cuda", **FAST)
    assert gpu.status == sem_table.status
    np.testing.assert_allclose(gpu.value, sem_table.value, rtol=1e-3, atol=1e-3)


def test_aie_and_aie_many_take_the_settings_of_aie_options():
    """One list of settings: the keywords of aie_many (and aie, but chunk_size) are AIEOptions' fields."""
    fields = {f: p.default for f, p in inspect.signature(AIEOptions).parameters.items()}
    many = {k: p.default for k, p in inspect.signature(aie_many).parameters.items() if p.kind == p.KEYWORD_ONLY}
    one = {k: p.default for k, p in inspect.signature(aie).parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert many == fields
    assert one == {k: (torch.float64 if k == "dtype" else v) for k, v in fields.items() if k != "chunk_size"}


# ----------------------------------------------------------------------------- reliability and identifiability


def test_reliable_on_a_well_overlapped_design_with_an_empty_reason(sem, sem_table):
    assert sem_table.query_corr[0] < 0.6  # the causal node leaves overlap: its value is not a function of q
    assert sem_table.reliable.tolist() == [True, True] and sem_table.reason == ["", ""]
    assert sem_table[0].reliable and sem_table[0].reason == ""
    df = sem_table.to_dataframe()
    assert df["reliable"].tolist() == [True, True] and df["reliable"].dtype == bool


def test_unreliable_when_the_balance_is_infeasible():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(600, 2))
    node = np.c_[q[:, 0] + 1e-2 * rng.normal(size=600), rng.normal(size=600)]
    y = q[:, 0] * node[:, 0] + rng.normal(size=600)
    r = aie(q, node, y, None, gamma=0.0, d_q=2, d_n=2, K=50, n_boot=10)
    assert r.status == "infeasible" and not r.reliable
    assert r.reason.startswith("infeasible balance")


def test_unreliable_when_the_node_is_nearly_a_function_of_the_query():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(800, 3))
    node = q @ rng.normal(size=(3, 3)) + 0.1 * rng.normal(size=(800, 3))  # noise 0.1: no overlap to speak of
    y = (q * node).sum(1) + rng.normal(size=800)
    r = quiet(aie, q, node, y, None, d_q=3, d_n=3, K=50, n_boot=10)
    assert 0.9 < r.query_corr < 1 - 1e-6 and np.isfinite(r.value)  # a number, but one not to trust
    assert not r.reliable and "node nearly determined by the query (canonical correlation" in r.reason


def test_unreliable_when_the_topics_barely_overlap_in_query_space():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 3, 1500)
    q = rng.normal(size=(1500, 2)) + 4.0 * np.eye(3, 2)[t]  # topics 4 sd apart
    node = q @ np.array([[0.3, 0.0], [0.0, 0.3]]) + rng.normal(size=(1500, 2))
    y = (q * node).sum(1) + rng.normal(size=1500)
    r = quiet(aie, q, node, y, t, d_q=2, d_n=2, K=50, n_boot=10)
    if np.isfinite(r.value):
        assert r.ess_x < 0.1 * r.n
    assert not r.reliable and "topic" in r.reason


@pytest.fixture(scope="module")
def hostile():
    """The hostile-input sweep's planted problem (m = 200, d = 3: balancing only)."""
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 200)
    q = rng.normal(size=(200, 4)) + t[:, None] * .5
    n = rng.normal(size=(200, 4)) + .3 * q
    y = n[:, 0] * q[:, 0] + t + .1 * rng.normal(size=200)
    return q, n, y, t, dict(K=20, n_boot=20, d_q=3, d_n=3)


@pytest.mark.parametrize("case, reason", [
    ("node is the query", "the node is a linear function of the query"),
    ("node is an affine map of the query", "the node is a linear function of the query"),
    ("constant node", "the node is constant"),
    ("constant query", "the query is constant"),
])
def test_unidentified_nodes_get_nan_status_and_the_reason(hostile, case, reason):
    q, n, y, t, kw = hostile
    args = {"node is the query": (q, q.copy()), "node is an affine map of the query": (q, 3 * q[:, ::-1] - 7),
            "constant node": (q, np.ones((200, 4))), "constant query": (np.ones((200, 4)), n)}[case]
    with pytest.warns(UserWarning, match="not identified by the data"):
        r = aie(args[0], args[1], y, t, **kw)
    assert np.isnan(r.value) and np.isnan(r.ci_low) and np.isnan(r.ci_high) and np.isnan(r.se)
    assert r.status == "unidentified" and not r.reliable and r.reason.startswith(reason)


@pytest.mark.parametrize("factor", [1e30, 1e-30])
def test_scaling_the_query_or_the_node_leaves_the_estimate_unchanged(hostile, factor):
    q, n, y, t, kw = hostile
    base = aie(q, n, y, t, **kw)
    assert np.isfinite(base.value) and base.status == "converged"
    for qs, ns in ((q * factor, n), (q, n * factor), (q * factor, n * factor)):
        r = aie(qs, ns, y, t, **kw)
        assert r.value == pytest.approx(base.value, rel=1e-8)
        assert (r.ci_low, r.ci_high) == pytest.approx((base.ci_low, base.ci_high), rel=1e-8)
        assert r.status == base.status and r.reliable == base.reliable


@pytest.mark.parametrize("qf, nf", [(1e160, 1e160), (1e200, 1e200), (1e-200, 1.0), (1.0, 1e-160)])
def test_inputs_near_the_float64_limits_give_the_estimate_of_the_unscaled_data(hostile, qf, nf):
    """Formerly 0 with interval (0, 0) and status 'converged'; now the inputs are rescaled first."""
    q, n, y, t, kw = hostile
    base = aie(q, n, y, t, **kw)
    r = aie(q * qf, n * nf, y, t, **kw)
    assert r.value == pytest.approx(base.value, rel=1e-8) and r.ci_low < r.ci_high
    assert r.status == "converged"


def test_half_precision_inputs_are_computed_in_float64_and_a_half_precision_solver_is_refused(hostile):
    q, n, y, t, kw = hostile
    q16, n16 = q.astype(np.float16), n.astype(np.float16)
    ref = aie(q16.astype(np.float64), n16.astype(np.float64), y, t, **kw)
    for qq, nn in ((q16, n16), (torch.from_numpy(q16), torch.from_numpy(n16)),
                   (torch.from_numpy(q).bfloat16(), torch.from_numpy(n).bfloat16())):
        r = aie(qq, nn, y, t, **kw)
        assert np.isfinite(r.value) and r.status == "converged"
        if qq.dtype in (np.float16, torch.float16):
            assert r.value == pytest.approx(ref.value, rel=1e-10)
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(InputError, match=rf"dtype must be torch.float32 or torch.float64; received {dt}: half "
                                             r"precision keeps about 3 significant digits"):
            aie(q, n, y, t, dtype=dt, **kw)


def test_seed_that_is_not_an_int_is_a_clear_error(hostile):
    q, n, y, t, kw = hostile
    with pytest.raises(InputError, match=r"seed must be an int >= 0; received '0'"):
        aie(q, n, y, t, seed="0", **kw)
    with pytest.raises(InputError, match=r"seed must be an int >= 0; received True"):
        aie(q, n, y, t, seed=True, **kw)


def test_a_topic_of_a_single_prompt_is_warned_about(hostile):
    q, n, y, t, kw = hostile
    t = t.copy()
    t[7] = 9  # topic 9 has one prompt
    with pytest.warns(UserWarning, match=r"1 topic\(s\) have fewer than 5 prompts \('9': 1\)"):
        aie(q, n, y, t, **kw)


def test_weights_stopped_at_the_iteration_cap_warn_and_are_unreliable(sem):
    with pytest.warns(UserWarning, match=r"stopped at the iteration cap \(status 'max_iter'\)"):
        # a fixed gamma: with gamma='auto' the rule keeps its last converged path point instead
        r = aie(sem.query, sem.nodes[0], sem.outcome, sem.topics, max_iter=1, gamma=0.01, gamma_x=0.01,
                **dict(FAST, n_boot=0))
    assert r.status == "max_iter" or r.status_x == "max_iter"
    assert not r.reliable and "not converged (max_iter)" in r.reason


def test_the_outcome_model_is_fitted_only_with_ten_prompts_per_column():
    from confounded_patching.estimation.aie import AUGMENT_PROMPTS_PER_COLUMN, outcome_columns

    sim = S.gaussian_sem(m=600, d_q=5, d_n=5, strength=0.5, confounding=0.5, seed=106)
    p = outcome_columns(5, 5, 2)
    assert AUGMENT_PROMPTS_PER_COLUMN * p == 570 < 600
    kw = dict(d_q=5, d_n=5, K=30, n_boot=0)
    assert aie(sim.query, sim.nodes[0], sim.outcome, sim.topics, **kw).augmented
    few = aie(sim.query[:500], sim.nodes[0][:500], sim.outcome[:500], sim.topics[:500], **kw)
    assert not few.augmented  # 500 < 570
    assert aie(sim.query[:500], sim.nodes[0][:500], sim.outcome[:500], sim.topics[:500], augment=True,
               **kw).augmented


def test_the_plain_reference_at_exact_balance_equals_the_engines_ht_estimator(sem):
    """Two implementations of Eq. (2) HT: at gamma = 0 the column scaling of the features does not matter."""
    from confounded_patching.estimation.reference import reference_aie

    kw = dict(K=50, n_boot=0, seed=3)
    ref = reference_aie(sem.query, sem.nodes, sem.outcome, sem.topics, gamma=0.0, winsorize=0.0, d_q=2, d_n=2, **kw)
    eng = aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, gamma=0.0, gamma_x=0.0, estimator="ht", d_q=2,
                   d_n=2, dtype=torch.float64, **kw)
    assert ref["status"] == eng.status == ["converged", "converged"]
    np.testing.assert_allclose(ref["value"], eng.value, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref["query_corr"], eng.query_corr, atol=1e-10)
