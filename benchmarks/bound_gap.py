"""How tight the bench's lossless floor (`bound`) is: the cheap floor against the exact optimum.

For sample batches of one layer, the floor of the busiest GPU's expert time (`planning/bounds.py`,
what `bench` reports as `bound` on every batch) beside the exact least time over every placement
within the memory and every whole-token split (`planning/lossless_milp.py`, HiGHS, seconds per
batch: far too slow for every batch). gap = exact / floor - 1 over the batches the solver proved
optimal; batches it did not prove within the time limit are counted apart (their gap is at most
the one shown in `unproven <=`). Loads: Zipf-popular experts drifting per batch, decode-sized
(1-64 tokens) and prefill-sized (128-1024 tokens) batches, routed top-k without repeats; or the
recorded routing of a profile (`--profile DIR`, e.g. a bench out dir's profile/, Mixtral sizes).

  .venv/bin/python benchmarks/bound_gap.py [--batches 8] [--time-limit 10] [--profile DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SETTINGS = (("mixtral-8x7b", "a6000", 8), ("olmoe-1b-7b", "h100", 8))


def synthetic_batches(num_experts: int, top_k: int, count: int, seed: int = 0) -> np.ndarray:
    """[count, experts] whole loads: half decode-sized, half prefill-sized batches."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(1.0 / np.arange(1, num_experts + 1))
    out = np.zeros((count, num_experts))
    for i in range(count):
        tokens = int(rng.choice([1, 4, 16, 64] if i % 2 == 0 else [128, 256, 512, 1024]))
        weights = popularity * rng.lognormal(0.0, 0.5, num_experts)
        for _ in range(tokens):
            out[i, rng.choice(num_experts, top_k, replace=False, p=weights / weights.sum())] += 1
    return out


def recorded_batches(profile_dir: Path, preset, count: int) -> np.ndarray:
    """[count, experts] loads of the first recorded layer of sample batches of a profile."""
    from moeless_cli.profiling import load_profile
    from moeless_cli.sim.routing import build_routing

    routing = build_routing(load_profile(profile_dir), preset.moe_layers, preset.num_experts, preset.top_k)
    return routing.sample_batches(count, seed=1)[:, 0]


def gap_row(cluster, batches: np.ndarray, time_limit_s: float) -> dict[str, float]:
    """The floor against the exact optimum on each batch: [batches, experts] -> summary."""
    from moeless_cli.planning.bounds import ReplicaCost
    from moeless_cli.planning.lossless_milp import exact_busiest_gpu
    from moeless_cli.sim.bound import lossless_floor

    slots = cluster.slots_per_gpu()
    replicas = slots * cluster.num_gpus
    floors = lossless_floor(cluster, slots, replicas).parts(batches).compute_s
    proven, unproven, seconds = [], [], []
    for load, floor in zip(batches, floors):
        cost = ReplicaCost.tabulate(cluster.replica_s(np.arange(int(load.sum()) + 2, dtype=np.float64)))
        start = time.perf_counter()
        exact = exact_busiest_gpu(load, cost, cluster.num_gpus, slots, replicas, floor=float(floor),
                                  time_limit_s=time_limit_s)
        seconds.append(time.perf_counter() - start)
        gap = exact.seconds / floor - 1 if floor > 0 else 0.0
        (proven if exact.proven else unproven).append(gap)
    return {"batches": len(batches), "proven": len(proven), "mean_gap": float(np.mean(proven)) if proven else np.nan,
            "max_gap": float(np.max(proven)) if proven else np.nan,
            "unproven_max": float(np.max(unproven)) if unproven else np.nan,
            "floor_ms": float(floors.mean() * 1e3), "solve_s": float(np.mean(seconds))}


def main() -> None:
    from moeless_cli.sim.hardware import get_hardware
    from moeless_cli.sim.presets import get_preset
    from moeless_cli.sim.timemodel import TIME_MODELS, ClusterModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per batch for the exact program")
    parser.add_argument("--profile", type=Path, help="recorded routing (Mixtral sizes only) instead of Zipf loads")
    args = parser.parse_args()
    print(f"{'model':14s} {'hw':6s} {'G':>2s} {'time model':10s} {'batches':>7s} {'proven':>6s} {'mean gap':>8s} "
          f"{'max gap':>8s} {'unproven <=':>11s} {'floor ms':>8s} {'solve s':>7s}")
    for preset_name, hw, gpus in SETTINGS[:1] if args.profile else SETTINGS:
        preset = get_preset(preset_name)
        batches = recorded_batches(args.profile, preset, args.batches) if args.profile else \
            synthetic_batches(preset.num_experts, preset.top_k, args.batches)
        for time_model in (m for m in TIME_MODELS if m != "paper"):
            row = gap_row(ClusterModel(get_hardware(hw), preset, gpus, time_model), batches, args.time_limit)
            print(f"{preset_name:14s} {hw:6s} {gpus:2d} {time_model:10s} {row['batches']:7d} {row['proven']:6d} "
                  f"{row['mean_gap']:8.2%} {row['max_gap']:8.2%} {row['unproven_max']:11.2%} {row['floor_ms']:8.4f} "
                  f"{row['solve_s']:7.1f}")


if __name__ == "__main__":
    main()
