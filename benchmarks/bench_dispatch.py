"""Dispatch-time re-balancing: water-filling, moeless's whole-token split and the exact LP, side by side.

For Zipf loads over E experts on G GPUs with the replicas of an ilp plan, prints the busiest GPU's
load of static EP, equal split over the plan (the paper's step 4), water-filling (fractional),
`balanced_split` (whole tokens: water-filling rounded, then augmenting paths) and the whole-token
optimum ceil(LP) (CBC), plus each split's time per layer (target: well under 1 ms at 64 experts x
8 GPUs). Two batch sizes: prefill-like (~512 tokens per GPU) and decode-like (4 tokens in all),
where rounding matters most.

  .venv/bin/python benchmarks/bench_dispatch.py
"""

from __future__ import annotations

import time

import numpy as np


def _batch_load(rng: np.random.Generator, popularity: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """Whole token-to-expert counts: [experts] for `tokens` tokens routed top-k by popularity."""
    weights = popularity / popularity.sum()
    load = np.zeros(popularity.size)
    for _ in range(tokens):
        load[rng.choice(popularity.size, top_k, replace=False, p=weights)] += 1
    return load


def main() -> None:
    from moeless_cli.planning import PlanningProblem, solve
    from moeless_cli.planning.dispatch import balanced_split, equal_split, gpu_work, lp_min_peak, water_fill
    from moeless_cli.planning.metrics import static_gpu_loads

    print(f"{'E x G':>9s} {'batch':>8s} {'static':>7s} {'equal':>7s} {'water':>7s} {'whole':>7s} {'optimum':>7s} "
          f"{'whole/opt':>9s} {'water ms':>8s} {'whole ms':>8s}")
    for num_experts, num_gpus, top_k in ((8, 8, 2), (64, 8, 8), (128, 16, 8), (256, 32, 8)):
        rng = np.random.default_rng(0)
        popularity = rng.permutation(1000.0 / np.arange(1, num_experts + 1) ** 1.0)
        plan = solve("ilp", popularity[None, :], PlanningProblem(num_gpus=num_gpus, time_limit_s=5.0)).plan.layers[0]
        for label, tokens in (("prefill", 512 * num_gpus // top_k), ("decode", 4)):
            rows = []
            for trial in range(5):  # batch loads drift from the planned popularity
                load = _batch_load(rng, popularity * rng.lognormal(0.0, 0.4, num_experts), tokens, top_k)
                mean = load.sum() / num_gpus
                start = time.perf_counter()
                water = water_fill(plan.expert, plan.gpu, load, num_gpus)
                water_ms = (time.perf_counter() - start) * 1e3
                start = time.perf_counter()
                whole = balanced_split(plan.expert, plan.gpu, load, num_gpus)
                whole_ms = (time.perf_counter() - start) * 1e3
                optimum = np.ceil(lp_min_peak(plan.expert, plan.gpu, load, num_gpus) - 1e-6)
                rows.append((
                    static_gpu_loads(load, num_gpus).max() / mean,
                    gpu_work(plan.gpu, equal_split(plan.expert, load), num_gpus).max() / mean,
                    gpu_work(plan.gpu, water, num_gpus).max() / mean,
                    gpu_work(plan.gpu, whole, num_gpus).max() / mean,
                    optimum / mean,
                    water_ms, whole_ms,
                ))
            s, e, w, b, opt, wms, bms = np.mean(rows, axis=0)
            print(f"{num_experts:>4d} x {num_gpus:<3d} {label:>8s} {s:7.3f} {e:7.3f} {w:7.3f} {b:7.3f} {opt:7.3f} "
                  f"{b / opt:9.4f} {wms:8.3f} {bms:8.3f}")
    print("loads are max GPU load / mean (1.0 = perfect balance); plan: ilp on the popularity, batch loads drift "
          "lognormal(0, 0.4); 'water' is fractional, 'whole' and 'optimum' count whole tokens")


if __name__ == "__main__":
    main()
