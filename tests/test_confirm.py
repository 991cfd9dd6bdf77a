"""Exact confirmation of a fast resample AIE: the right nodes, the exact values, the agreement and its verdict."""

import numpy as np
import pytest

import confounded_patching as cp
import tiny
from confounded_patching.interventions.confirm import agreement, verdict

A, B = 40, 41


def test_confirm_runs_the_top_and_random_nodes_exactly_on_the_results_pairs(tmp_path):
    hf, tok = tiny.hf_model("llama"), tiny.tokenizer()
    prompts = tiny.prompts(8, seed=3)
    nodes = cp.nodes(hf, positions=(-1, -2))
    metric = cp.metrics.logit_diff(A, B)
    fast = cp.resample(hf, prompts, nodes, metric, method="auto", n_pairs=10, tokenizer=tok, progress=False)
    check = cp.confirm(hf, prompts, fast, metric, top_k=3, n_random=4, tokenizer=tok, progress=False)
    heads = [k for k, n in enumerate(nodes) if n.kind == "head"]
    assert check.n_exact_nodes == len(nodes) - len(heads)  # auto's exact nodes are not rerun
    top = sorted(heads, key=lambda k: -abs(fast.value[k]))[:3]
    assert check.nodes[:3] == [nodes[k] for k in top] and check.selected == ["top"] * 3 + ["random"] * 4
    assert len(set(check.nodes)) == 7 and all(n.kind == "head" for n in check.nodes)
    exact = cp.resample(hf, prompts, check.nodes, metric, pairs=fast.pairs, tokenizer=tok, progress=False)
    np.testing.assert_allclose(check.exact, exact.value, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(check.estimate, [fast.value[nodes.index(n)] for n in check.nodes])
    assert check.agreement == agreement(check.estimate, check.exact, check.estimate_effects, check.exact_effects)
    assert check.verdict in ("caution", "do not trust")  # 7 nodes are too few to earn "trust"
    back = cp.Confirmation.load(check.save(tmp_path / "c"))
    assert back.nodes == check.nodes and back.agreement == check.agreement
    frame = check.to_dataframe()
    assert list(frame["selected"]) == check.selected and frame["method"].eq("resample").all()


def test_confirm_of_an_all_donor_result_draws_pairs_within_its_strata():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(8, seed=5)
    strata = ["a"] * 4 + ["b"] * 4
    metric = cp.metrics.logit(A)
    fast = cp.resample(hf, prompts, cp.nodes(hf, kinds=("head",)), metric, method="attribution", n_pairs="all",
                       strata=strata, tokenizer=tok, progress=False)
    check = cp.confirm(hf, prompts, fast, metric, top_k=2, n_random=2, n_pairs=9, tokenizer=tok, progress=False)
    assert check.pairs.shape == (9, 2) and check.estimate_effects is None and check.stratified
    assert all(strata[i] == strata[j] and i != j for i, j in check.pairs)
    assert np.isnan(check.agreement["per_pair_spearman"])


def test_confirm_checks_its_arguments_and_has_nothing_to_do_for_an_exact_result():
    hf, tok = tiny.hf_model("gpt2"), tiny.tokenizer()
    prompts = tiny.prompts(5, seed=1)
    metric = cp.metrics.logit(A)
    exact = cp.resample(hf, prompts, [cp.MLP(0), cp.Head(1, 1)], metric, n_pairs=4, tokenizer=tok, progress=False)
    nothing = cp.confirm(hf, prompts, exact, metric, tokenizer=tok, progress=False)
    assert nothing.nodes == [] and nothing.verdict == "exact" and "nothing to confirm" in nothing.summary()
    with pytest.raises(cp.InputError, match="not the result's outcome"):
        cp.confirm(hf, prompts, exact, cp.metrics.logit(B), tokenizer=tok, progress=False)
    with pytest.raises(cp.InputError, match="the 5 prompts the result was computed on; received 4"):
        cp.confirm(hf, prompts[:4], exact, metric, tokenizer=tok, progress=False)
    with pytest.raises(cp.InputError, match="result must be a ResampleResult"):
        cp.confirm(hf, prompts, exact.value, metric, tokenizer=tok, progress=False)
    with pytest.raises(cp.InputError, match="top_k must be an int >= 0"):
        cp.confirm(hf, prompts, exact, metric, top_k=-1, tokenizer=tok, progress=False)


def test_agreement_and_verdict():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40)
    same = agreement(x, 2 * x, np.stack([x, x]), np.stack([x, x]))
    assert same["spearman_abs"] == pytest.approx(1) and same["pearson"] == pytest.approx(1)
    assert same["per_pair_spearman"] == pytest.approx(1) and same["top_overlap"] == 1 and verdict(same) == "trust"
    noisy = agreement(x, x + 0.25 * rng.standard_normal(40))
    assert verdict(noisy) == "caution", noisy
    assert verdict(agreement(x, rng.standard_normal(40))) == "do not trust"
    assert verdict(agreement(x[:5], x[:5])) == "caution"  # too few nodes for "trust"
    with_nan = agreement(np.r_[x, np.nan], np.r_[x, 1.0])
    assert with_nan["n"] == 40
