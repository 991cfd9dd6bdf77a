"""Accuracy of the AIE estimators against planted truth (designs x estimators), and of gamma rules.

Designs (``cp.simulate``; truth in closed form or by Monte
Carlo): Gaussian-topic SEM with a causal and a topic-only node (d = 2, 5,
25), a stronger causal node, an additive outcome (truth 0), a randomised
query, a tanh mediator. Estimators: the default (adjusted, Eq. 2,
calibrated Hajek, augmented with the ridge outcome model, squares, EB,
gamma="auto") and one change at a time: no augmentation (and also no
calibration), no calibration,
Horvitz-Thompson, the paper's 5%/95% winsorized HT, Algorithm 1 as printed, the paper's features, parametric weights
(Appendix A), and the unadjusted ("normal") estimator.

For each design/node the table gives the truth (mean over seeds) and, per
estimator, the mean estimate, its standard deviation over seeds, the
share of seeds whose 95% bootstrap interval covers the truth, and in how many
seeds the node was flagged reliable (``r4/5``). ``benchmarks/studies/family.py``
runs the broader seeded family of designs with a held-out part.

Run:  OMP_WAIT_POLICY=PASSIVE python benchmarks/studies/accuracy.py [--seeds 5] [--first-seed 300] [--rules] [--squares]
          [--penalties] [--estimators a,b] [--designs a,b]
  --rules    also compare gamma rules (pair-ESS floors, fixed gammas), with and without augmentation
  --squares  also the exact-balance scalar SEM of the notes (squares vs paper features)
  --penalties  also the outcome model's penalty: the default (additive columns free, products at
             ALPHA = 0.01), other values, every column penalized, and the penalty chosen by
             generalised cross-validation (the earlier default, kept here as a reference)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from confounded_patching import aie_many
from confounded_patching import simulate as S
from confounded_patching.estimation import outcome_model as om
from confounded_patching.estimation.gamma_rule import GammaRule

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
    "no augment or calib": dict(augment=False, calibrate=False),
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


def _gcv_ridge(F, y, penalized, scale_cols, alpha=None, L=None):
    """The outcome model's earlier fit, for comparison: every column penalized, the penalty chosen per node by
    generalised cross-validation over 15 values from 1e-3 to 1e4 times the mean eigenvalue (eigendecomposition)."""
    F, y = F.double(), y.double()
    B, m, p = F.shape
    mu = F.mean(1, keepdim=True)
    Fc, yc = F - mu, y - y.mean()
    S, V = torch.linalg.eigh(Fc.transpose(1, 2) @ Fc)
    r = torch.einsum("bpk,bp->bk", V, torch.einsum("bmp,m->bp", Fc, yc))
    S = S.clamp_min(0)
    scale = S.sum(1, keepdim=True) / min(m, p)
    best, alpha = torch.full((B,), float("inf"), dtype=F.dtype), torch.zeros(B, dtype=F.dtype)
    for a in torch.logspace(-3, 4, 15, dtype=torch.float64):
        al = a * scale[:, 0]
        den = S + al[:, None]
        rss = float(yc @ yc) - 2 * (r * r / den).sum(1) + (r * r * S / (den * den)).sum(1)
        gcv = m * rss / (m - (S / den).sum(1)).clamp_min(1.0) ** 2
        alpha = torch.where(gcv < best, al, alpha)
        best = torch.minimum(gcv, best)
    beta = torch.einsum("bpk,bk->bp", V, r / (S + alpha[:, None]))
    return beta, y.mean() - (mu[:, 0] * beta).sum(1), alpha, torch.zeros(B, p, p, dtype=F.dtype)  # no shared factor


def _all_penalized(F, y, penalized, scale_cols, alpha=om.ALPHA, L=None):
    """A fixed penalty on every column (the additive ones too), in units of the q outer n columns' scale."""
    return _RIDGE(F, y, torch.ones_like(penalized), scale_cols, alpha)


_RIDGE = om.ridge
PENALTIES = {  # outcome-model fits compared by --penalties: (ridge function, ALPHA)
    "free additive, 0.01 (dflt)": (om.ridge, 0.01),
    "free additive, 0.003": (om.ridge, 0.003),
    "free additive, 0.03": (om.ridge, 0.03),
    "free additive, 0.1": (om.ridge, 0.1),
    "all penalized, 0.01": (_all_penalized, 0.01),
    "all penalized, 0.1": (_all_penalized, 0.1),
    "all penalized, GCV": (_gcv_ridge, None),
}


def fit(sim, seed, settings):
    d = sim.query.shape[1]
    kw = dict(d_q=d, d_n=d, K=200, n_boot=200, seed=seed, dtype=torch.float64)
    kw.update(settings)
    confounder = kw.pop("confounder", sim.topics)
    ridge, alpha = kw.pop("_penalty", (om.ridge, om.ALPHA))
    om.ridge, om.fit_outcomes.__kwdefaults__["alpha"] = ridge, alpha  # restored below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return aie_many(sim.query, sim.nodes, sim.outcome, confounder, **kw)
    finally:
        om.ridge, om.fit_outcomes.__kwdefaults__["alpha"] = _RIDGE, om.ALPHA


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
                rel = sum(bool(r.reliable[b]) for r in res[e])
                cells.append(f"{np.nanmean(v):+.2f} ({np.nanstd(v):.2f}) {cover:.0%} r{rel}/{len(seeds)}")
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
    ap.add_argument("--penalties", action="store_true")
    ap.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated subset of the designs")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated subset of the columns")
    args = ap.parse_args()
    names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if not names or any(e not in ESTIMATORS for e in names):
        ap.error(f"--estimators must come from {list(ESTIMATORS)}; received {names}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    chosen = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not chosen or any(d not in DESIGNS for d in chosen):
        ap.error(f"--designs must come from {list(DESIGNS)}; received {chosen}")
    designs = {d: DESIGNS[d] for d in chosen}
    print(f"seeds {seeds}; K = 200; n_boot = 200; cells: mean (sd over seeds) and 95% interval coverage")
    table(designs, {e: ESTIMATORS[e] for e in names}, seeds, "Estimators")
    if args.rules:
        table(designs, RULES, seeds, "Gamma rules (default estimator)")
        table(designs, {k: dict(v, augment=False) for k, v in RULES.items()}, seeds,
              "Gamma rules (balancing only, augment=False)")
    if args.squares:
        squares_table(seeds)
    if args.penalties:
        table(designs, {k: {"_penalty": v} for k, v in PENALTIES.items()}, seeds,
              "Outcome-model penalties (default estimator otherwise)")


if __name__ == "__main__":
    main()
