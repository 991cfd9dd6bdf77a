"""Accuracy of the AIE estimators against planted truth (designs x estimators), and of gamma rules.

Designs (``confounded_patching.simulate``; truth in closed form or by Monte
Carlo): Gaussian-topic SEM with a causal and a topic-only node (d = 2, 5,
25), a stronger causal node, an additive outcome (truth 0), a randomised
query, a tanh mediator. Estimators: the default (adjusted, Eq. 2,
calibrated Hajek, augmented with the ridge outcome model, squares, EB,
gamma="auto") and one change at a time: no augmentation, no calibration,
Horvitz-Thompson, the paper's 5%/95% winsorized HT, Algorithm 1 as printed, the paper's features, parametric weights
(Appendix A), and the unadjusted ("normal") estimator.

For each design/node the table gives the truth (mean over seeds) and, per
estimator, the mean estimate, its standard deviation over seeds, and the
share of seeds whose 95% bootstrap interval covers the truth.

Run:  OMP_WAIT_POLICY=PASSIVE python benchmarks/accuracy.py [--seeds 5] [--rules] [--squares] [--estimators a,b]
  --rules    also compare gamma rules (pair-ESS floors, fixed gammas)
  --squares  also the exact-balance scalar SEM of the notes (squares vs paper features)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from confounded_patching import simulate as S
from confounded_patching.mediation import GammaRule, aie_many

DESIGNS = {
    "sem d=2": lambda s: S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=0.5, confounding=0.5, seed=s),
    "sem d=2 strong": lambda s: S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=1.0, confounding=0.5, seed=s),
    "additive d=2": lambda s: S.additive(m=2000, d_q=2, d_n=2, confounding=0.5, seed=s),
    "randomized d=2": lambda s: S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=0.5, confounding=0.0, seed=s),
    "tanh d=2": lambda s: S.nonlinear(m=2000, d_q=2, d_n=2, strength=1.5, confounding=0.5, seed=s),
    "sem d=5 m=1000": lambda s: S.gaussian_sem(m=1000, d_q=5, d_n=5, strength=0.5, confounding=0.5, seed=s),
    "sem d=25 m=1000": lambda s: S.gaussian_sem(m=1000, d_q=25, d_n=25, strength=0.5, confounding=0.3, seed=s),
}

ESTIMATORS = {
    "default": dict(),
    "no augment": dict(augment=False),
    "no calib": dict(calibrate=False),
    "HT": dict(estimator="ht"),
    "HT wins5%": dict(estimator="ht", winsorize=0.05),
    "alg1 HT": dict(estimator="ht", variant="algorithm1"),
    "paper feat": dict(features="paper"),
    "parametric": dict(weights="parametric"),
    "unadjusted": dict(confounder=None),
}

RULES = {
    "floor .05": dict(gamma_rule=GammaRule(pair_ess_floor=0.05)),
    "floor .1 (dflt)": dict(gamma_rule=GammaRule(pair_ess_floor=0.1)),
    "floor .2": dict(gamma_rule=GammaRule(pair_ess_floor=0.2)),
    "floor .3": dict(gamma_rule=GammaRule(pair_ess_floor=0.3)),
    "no noise floor": dict(gamma_rule=GammaRule(noise_floor=False)),
    "gamma=0.05": dict(gamma=0.05, gamma_x=0.05),
    "gamma=0.2": dict(gamma=0.2, gamma_x=0.2),
}


def fit(sim, seed, settings):
    d = sim.query.shape[1]
    kw = dict(d_q=d, d_n=d, K=200, n_boot=200, seed=seed, dtype=torch.float64)
    kw.update(settings)
    confounder = kw.pop("confounder", sim.topics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aie_many(sim.query, sim.nodes, sim.outcome, confounder, **kw)


def table(designs, estimators, seeds, title):
    print(f"\n## {title}\n")
    names = list(estimators)
    print("| design | node | truth | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for dname, make in designs.items():
        t0 = time.perf_counter()
        sims = [make(s) for s in seeds]
        res = {e: [fit(sim, s, estimators[e]) for sim, s in zip(sims, seeds)] for e in names}
        truth = np.array([sim.truth for sim in sims])
        for b, node in enumerate(sims[0].names):
            cells = []
            for e in names:
                v = np.array([r.value[b] for r in res[e]])
                cover = np.mean([(r.ci_low[b] <= t) & (t <= r.ci_high[b]) for r, t in zip(res[e], truth[:, b])])
                cells.append(f"{np.nanmean(v):+.2f} ({np.nanstd(v):.2f}) {cover:.0%}")
            print(f"| {dname} | {node} | {truth[:, b].mean():+.2f} | " + " | ".join(cells) + " |")
        print(f"<!-- {dname}: {time.perf_counter() - t0:.0f} s -->", flush=True)


def squares_table(seeds):
    print("\n## Exact balance (gamma = 0), scalar SEM, m = 8000: squares vs the paper's features\n")
    print("| seed | truth | squares | paper |")
    print("|---|---|---|---|")
    for s in seeds:
        sim = S.gaussian_sem(m=8000, d_q=1, d_n=1, strength=0.7, confounding=0.5, n_spurious=0, seed=s)
        row = []
        for feat in ("squares", "paper"):
            r = fit(sim, s, dict(features=feat, gamma=0.0, gamma_x=0.0, calibrate=False, K=50, n_boot=0))
            row.append(f"{r.value[0]:+.3f}")
        print(f"| {s} | {sim.truth[0]:+.3f} | " + " | ".join(row) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=300)
    ap.add_argument("--rules", action="store_true")
    ap.add_argument("--squares", action="store_true")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated subset of the columns")
    args = ap.parse_args()
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if not names or any(e not in ESTIMATORS for e in names):
        ap.error(f"--estimators must come from {list(ESTIMATORS)}; received {names}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"seeds {seeds}; K = 200; n_boot = 200; cells: mean (sd over seeds) and 95% interval coverage")
    table(DESIGNS, {e: ESTIMATORS[e] for e in names}, seeds, "Estimators")
    if args.rules:
        table(DESIGNS, RULES, seeds, "Gamma rules (default estimator)")
    if args.squares:
        squares_table(seeds)


if __name__ == "__main__":
    main()
