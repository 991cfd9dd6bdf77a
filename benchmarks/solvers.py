"""Newton against FISTA on the entropy-balancing problems of a real model.

The problems are those the estimator solves first for every node (the top of
the γ path, ``gamma_rule.select_gamma``): SmolLM2-135M, the professions
prompts of ``benchmarks/mediation.py`` (captured into ``--store``, reused when
complete), 64 attention heads at the last position, d = 25, and

- adjusted: the node model ``z = [n, x]`` warm-started from π_x's solution,
  products ``q⊗n`` at ``γ_max``, ``q⊗x`` at π_x's γ (many of these are
  infeasible on this model: ``docs/evidence.md``);
- unadjusted: the first path step, ``z = n``, products at ``0.8 γ_max``.

Both solvers run in float32 with the estimator's KKT tolerance (1e-4) and
iteration caps (Newton 200 steps, FISTA 3,000 iterations), interleaved over
``--rounds``. Printed: median wall time, statuses, iterations, the
condition number of the first problem's feature covariance, and on the
problems both call converged, the largest difference of their weights and
of their float64 objectives (negative: Newton's is lower).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/solvers.py [--store /tmp/cp-bench-store] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import _common
import numpy as np
import torch

import confounded_patching as cp
from confounded_patching.estimation.balancer import EntropyBalancer
from confounded_patching.estimation.confounders import confounder_features
from confounded_patching.estimation.features import FactoredFeatures, feature_layout
from confounded_patching.estimation.gamma_rule import GammaRule, select_gamma_x
from confounded_patching.estimation.node_coords import coords, node_source
from confounded_patching.estimation.ratio_models import embed_lambda_x, gamma_max_products

from mediation import PREFIX, nodes_for


def problems(store_dir: str, n_nodes: int = 64):
    """The two batches of problems: (name, q [m, 25], z [B, m, d_z], gamma [B, p], lambda_init [B, p] or None)."""
    model = cp.models.smollm2()
    data = cp.datasets.professions(n=1000, tokenizer=model.tokenizer)
    nodes = nodes_for(model)
    store = cp.collect(model, [PREFIX + p for p in data.prompts], nodes, metric=data.metric, embed_layer=7,
                       batch_size=32, store=store_dir, progress=False)
    heads = [n for n in nodes if isinstance(n, cp.Head)][:n_nodes]
    m = len(data.prompts)
    q = coords(store.embedding.to(torch.float64), 25, 0).float()
    n = node_source(store.select(heads), m).coords(list(range(len(heads))), 25, 0).float()  # as the estimator does
    x = torch.from_numpy(confounder_features(np.asarray(data.topics), m)[0]).float()
    B, m, d_n = n.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xmodel, _ = select_gamma_x(q, x, GammaRule(), squares=True, tol=1e-4, max_iter=None)
    gx = float(xmodel.gamma[0])
    gmax = gamma_max_products(q, n)
    w_x = torch.softmax(xmodel.log_pi[0], 0)
    gmax = torch.maximum(gmax, torch.einsum("m,md,bme->bde", w_x, q, n).abs().flatten(1).amax(-1))
    out = []
    for name, z, g_prod, g_x, init in (
            ("adjusted, top of the path", torch.cat([n, x.expand(B, -1, -1)], -1), gmax, gx,
             embed_lambda_x(xmodel.lam[0], 25, d_n, x.shape[1]).expand(B, -1)),
            ("unadjusted, first path step", n, 0.8 * gamma_max_products(q, n), None, None)):
        dz = z.shape[2]
        lay = feature_layout(25, dz)
        gam = torch.zeros(B, lay["qz"].stop)
        per_z = g_prod[:, None].expand(B, dz).clone()
        if g_x is not None:
            per_z[:, d_n:] = g_x
        gam[:, lay["qz"]] = per_z[:, None, :].expand(B, 25, dz).reshape(B, -1)
        out.append((name, q, z, gam, init))
    return out


def solve(solver: str, q, z, gam, init):
    t0 = time.perf_counter()
    eb = EntropyBalancer(gam, tol=1e-4, dtype=torch.float32, solver=solver,
                         max_iter=200 if solver == "newton" else 3000)
    eb.fit_factored(q, z, standardize=False, lambda_init=init)
    return time.perf_counter() - t0, eb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/cp-bench-store")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    _common.setup_threads()
    for name, q, z, gam, init in problems(args.store):
        times = {"newton": [], "fista": []}
        fits = {}
        for _ in range(args.rounds):
            for solver in ("newton", "fista"):
                dt, fits[solver] = solve(solver, q, z, gam, init)
                times[solver].append(dt)
        med = {s: float(np.median(t)) for s, t in times.items()}
        print(f"\n## {name}: {z.shape[0]} problems, m = {z.shape[1]}, p = {gam.shape[1]}\n")
        print("| solver | median wall (s) | converged | infeasible | max_iter | iterations (mean / max) |")
        print("|---|---|---|---|---|---|")
        for s, eb in fits.items():
            st = eb.status_
            print(f"| {s} | {med[s]:.2f} | {st.count('converged')} | {st.count('infeasible')} | "
                  f"{st.count('max_iter')} | {eb.n_iter_.mean():.0f} / {eb.n_iter_.max()} |")
        both = [i for i, (a, b) in enumerate(zip(fits["newton"].status_, fits["fista"].status_))
                if a == b == "converged"]
        op = FactoredFeatures(q.double(), z.double(), True)

        def objective(lam):
            lam = torch.as_tensor(lam).double()
            return torch.logsumexp(op.scores(lam), -1) + (gam.double() * lam.abs()).sum(-1)

        ev = torch.linalg.eigvalsh(torch.cov(op.dense(torch.tensor([0]))[0].T))
        print(f"\nCondition number of the first problem's feature covariance (uniform weights): "
              f"{float(ev[-1] / ev[0]):.1e}")
        dF = (objective(fits["newton"].lambda_) - objective(fits["fista"].lambda_))[both]
        dw = (fits["newton"].weights_ - fits["fista"].weights_)[both].abs().max()
        print(f"\nFISTA / Newton wall time: {med['fista'] / med['newton']:.1f}x. On the {len(both)} problems both "
              f"solved: largest weight difference {float(dw):.1e}; objective difference Newton - FISTA "
              f"{float(dF.min()):+.1e} to {float(dF.max()):+.1e}.")
        print(json.dumps({"problems": name, "newton_s": med["newton"], "fista_s": med["fista"]}))


if __name__ == "__main__":
    main()
