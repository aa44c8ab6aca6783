"""Fit the trajectory generator's parameters to DESIGN.md section 1's published table.

Run: .venv/bin/python benchmarks/fit_trace_generator.py [--agents 4000] [--seed 12345]

For each max length, a Nelder-Mead search (written out here; no scipy dependency) minimises
the sum of squared log-ratios between the generated trace's five means (turns, append / turn,
generated / turn, total, context) and the published ones, with common random numbers (a fixed
seed) so the objective is deterministic. sigma_first and the per-turn spreads are held fixed.
It prints the fitted `GeneratorParams(...)` lines that are committed in
src/dualpath/workload/generator.py, then re-checks them on a fresh seed.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np

from dualpath.workload.generator import PARAMS, PUBLISHED_STATS, GeneratorParams, generate
from dualpath.workload.stats import trace_stats

KEYS = ("turns_mean", "append_tokens_mean", "gen_tokens_mean", "total_tokens_mean",
        "context_tokens_mean")


def to_params(x: np.ndarray, base: GeneratorParams) -> GeneratorParams:
    return GeneratorParams(
        mu_first=float(x[0]), sigma_first=base.sigma_first,
        mu_append=float(x[1]), sigma_append=float(math.exp(x[2])),
        mu_gen=float(x[3]), sigma_gen=float(math.exp(x[4])),
        p_full=float(1 / (1 + math.exp(-x[5]))), beta_a=float(math.exp(x[6])),
        sigma_turn_append=base.sigma_turn_append, sigma_turn_gen=base.sigma_turn_gen,
    )


def from_params(p: GeneratorParams) -> np.ndarray:
    return np.array([p.mu_first, p.mu_append, math.log(p.sigma_append), p.mu_gen,
                     math.log(p.sigma_gen), math.log(p.p_full / (1 - p.p_full)),
                     math.log(p.beta_a)])


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.15,
                iters: int = 150) -> np.ndarray:
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (s - simplex[0]) for s in simplex[1:]]
                values = [values[0]] + [f(s) for s in simplex[1:]]
    return simplex[int(np.argmin(values))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--iters", type=int, default=150)
    args = ap.parse_args()
    for key, target in PUBLISHED_STATS.items():
        base = PARAMS[key]

        def loss(x: np.ndarray, key: str = key, target: dict = target,
                 base: GeneratorParams = base) -> float:
            s = trace_stats(generate(key, args.agents, args.seed, to_params(x, base)))
            return sum(math.log(s[k] / target[k]) ** 2 for k in KEYS)

        best = to_params(nelder_mead(loss, from_params(base), iters=args.iters), base)
        check = trace_stats(generate(key, args.agents * 2, args.seed + 1, best))
        print(f'    "{key}": GeneratorParams({best.mu_first:.4f}, {best.sigma_first}, '
              f'{best.mu_append:.4f}, {best.sigma_append:.4f}, {best.mu_gen:.4f}, '
              f'{best.sigma_gen:.4f}, {best.p_full:.4f}, {best.beta_a:.4f}),')
        print("      fresh seed:", {k: f"{check[k] / target[k] - 1:+.3%}" for k in KEYS})


if __name__ == "__main__":
    main()
