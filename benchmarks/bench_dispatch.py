"""Dispatch-time re-balancing: water-filling vs the exact LP (CBC), side by side in one run.

For Zipf loads over E experts on G GPUs with the replicas of an ilp plan, prints the busiest GPU's
load of static EP, equal split over the plan (the paper's step 4), water-filling, and the LP
optimum, plus water-filling's time per layer (target: well under 1 ms at 64 experts x 8 GPUs).

  .venv/bin/python benchmarks/bench_dispatch.py
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    from moeless_cli.online.dispatch import equal_split, gpu_work, lp_min_peak, water_fill
    from moeless_cli.planning import PlanningProblem, solve
    from moeless_cli.planning.metrics import static_gpu_loads

    print(f"{'E x G':>9s} {'static':>8s} {'equal':>8s} {'water':>8s} {'LP':>8s} {'water/LP':>8s} {'water ms':>9s}")
    for num_experts, num_gpus in ((8, 8), (64, 8), (128, 16), (256, 32)):
        rng = np.random.default_rng(0)
        base = 1000.0 / np.arange(1, num_experts + 1) ** 1.0
        history = rng.permutation(base)[None, :]
        plan = solve("ilp", history, PlanningProblem(num_gpus=num_gpus, time_limit_s=5.0)).plan.layers[0]
        rows = []
        for trial in range(5):  # batch loads drift from the planned history
            load = history[0] * rng.lognormal(0.0, 0.4, num_experts)
            mean = load.sum() / num_gpus
            start = time.perf_counter()
            tokens = water_fill(plan.expert, plan.gpu, load, num_gpus)
            ms = (time.perf_counter() - start) * 1e3
            rows.append((
                static_gpu_loads(load, num_gpus).max() / mean,
                gpu_work(plan.gpu, equal_split(plan.expert, load), num_gpus).max() / mean,
                gpu_work(plan.gpu, tokens, num_gpus).max() / mean,
                lp_min_peak(plan.expert, plan.gpu, load, num_gpus) / mean,
                ms,
            ))
        s, e, w, lp, ms = np.mean(rows, axis=0)
        print(f"{num_experts:>4d} x {num_gpus:<3d} {s:8.3f} {e:8.3f} {w:8.3f} {lp:8.3f} {w / lp:8.4f} {ms:9.3f}")
    print("loads are max GPU load / mean (1.0 = perfect balance); plan: ilp on the history, loads drift lognormal(0, 0.4)")


if __name__ == "__main__":
    main()
