"""Cost-aware dispatch under the physical time model: the busiest GPU's expert time of each split.

For Zipf-skewed batch loads over E experts on G GPUs and a plan of E + E/4 replicas (expert e on GPU
e mod G, plus a second replica of the E/4 most popular experts on the GPUs with the least expected
load), prints the busiest GPU's cost in ms under the physical model's replica cost
max(w, c * 64 * ceil(t / 64)) for: static EP (every expert on its first replica), equal split over the
plan (the paper's step 4), `balanced_split` (the whole-token optimum of the linear stand-in
t + entry per used replica), `cost_aware_split` (the step cost itself) and the exact optimum of
`exact_split_cost` (HiGHS, 10 s; '*' marks an unproven incumbent), plus each split's host time
(median of 5 calls after a warm-up) on this CPU. Constants: Mixtral-8x7B on A6000s and OLMoE-1B-7B on H100s.

  .venv/bin/python benchmarks/bench_cost_split.py [--trials 3] [--milp-limit 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CASES = ((8, 8, 32, 2), (64, 8, 2048, 8), (256, 64, 8192, 8))  # experts, GPUs, tokens, top-k
PRESETS = (("mixtral-8x7b", "a6000"), ("olmoe-1b-7b", "h100"))


def zipf_load(rng: np.random.Generator, popularity: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """Whole token-to-expert counts [experts]: each token picks top_k distinct experts by popularity
    (Gumbel top-k sampling without replacement)."""
    keys = np.log(popularity)[None, :] + rng.gumbel(size=(tokens, popularity.size))
    picks = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
    return np.bincount(picks.ravel(), minlength=popularity.size).astype(np.float64)


def spare_plan(popularity: np.ndarray, num_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """expert, gpu: [E + E/4]: e on GPU e mod G, then the E/4 most popular experts once more, each on
    the GPU with the least expected load that does not hold it (its expected load halves)."""
    E = popularity.size
    expert, gpu = list(range(E)), [e % num_gpus for e in range(E)]
    expected = np.bincount(gpu, weights=popularity, minlength=num_gpus)
    for e in np.argsort(-popularity)[:E // 4]:
        free = [g for g in np.argsort(expected, kind="stable") if g != e % num_gpus]
        if not free:
            break
        expected[e % num_gpus] -= popularity[e] / 2
        expected[free[0]] += popularity[e] / 2
        expert.append(int(e))
        gpu.append(int(free[0]))
    return np.asarray(expert), np.asarray(gpu)


def timed(fn, repeats: int = 5) -> tuple[np.ndarray, float]:
    """fn's result and the median of `repeats` calls in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return out, float(np.median(times))


def case_row(cluster, expert, gpu, load, num_gpus, milp_limit: float) -> tuple[list[float], list[float], bool]:
    """(busiest cost in ms per split [static, equal, balanced, cost-aware, optimum], host ms of the last
    three splits' calls [balanced, cost-aware, optimum], optimum proven)."""
    from moeless_cli.planning.cost_split import busiest_cost, cost_aware_split, exact_split_cost
    from moeless_cli.planning.dispatch import balanced_split, equal_split

    entry, tile = cluster.entry_tokens, cluster.hardware.gemm_tile_tokens
    E = load.size
    static = np.where(np.arange(expert.size) < E, load[expert], 0.0)
    balanced, balanced_ms = timed(lambda: balanced_split(expert, gpu, load, num_gpus, entry))
    aware, aware_ms = timed(lambda: cost_aware_split(expert, gpu, load, num_gpus, entry, tile))
    start = time.perf_counter()
    optimum, proven = exact_split_cost(expert, gpu, load, num_gpus, entry, tile, milp_limit)
    milp_ms = (time.perf_counter() - start) * 1e3
    costs = [busiest_cost(gpu, t, num_gpus, entry, tile) for t in (static, equal_split(expert, load), balanced, aware)]
    ms = [c * cluster.token_s * 1e3 for c in costs + [optimum]]
    return ms, [balanced_ms, aware_ms, milp_ms], proven


def main() -> None:
    from moeless_cli.sim.hardware import get_hardware
    from moeless_cli.sim.presets import PRESETS as MODELS
    from moeless_cli.sim.timemodel import ClusterModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--milp-limit", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{'preset':>20s} {'E x G, tokens':>17s} {'static':>7s} {'equal':>7s} {'balanced':>8s} {'aware':>7s} "
          f"{'optimum':>8s} {'aware/opt':>9s} {'bal ms':>7s} {'aware ms':>8s} {'milp ms':>8s}")
    for preset, hardware in PRESETS:
        for E, G, tokens, top_k in CASES:
            cluster = ClusterModel(get_hardware(hardware), MODELS[preset], G)
            rng = np.random.default_rng(0)
            popularity = rng.permutation(1.0 / np.arange(1, E + 1))
            expert, gpu = spare_plan(popularity, G)
            rows, proofs = [], []
            for _ in range(args.trials):
                load = zipf_load(rng, popularity * rng.lognormal(0.0, 0.4, E), tokens, top_k)
                ms, host, proven = case_row(cluster, expert, gpu, load, G, args.milp_limit)
                rows.append(ms + host)
                proofs.append(proven)
            s, e, b, a, opt, bms, ams, mms = np.mean(rows, axis=0)
            mark = " " if all(proofs) else "*"
            print(f"{preset + '/' + hardware:>20s} {f'{E} x {G}, {tokens}':>17s} {s:7.4f} {e:7.4f} {b:8.4f} {a:7.4f} "
                  f"{opt:7.4f}{mark} {a / opt:9.4f} {bms:7.3f} {ams:8.3f} {mms:8.0f}")
    print("costs: busiest GPU's expert time in ms (mean over trials), physical replica cost; '*': the optimum "
          "is HiGHS's incumbent within the limit, not proven; host ms: median of 5 calls on this CPU")


if __name__ == "__main__":
    main()
