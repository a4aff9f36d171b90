"""The simulator against real mode on this machine: its error on MoE-layer time, per system.

Runs `moeless bench --mode real` (every system through serve's runtime, CPU workers) on a built-in
model and prints the simulator check: each system's MoE-layer time is predicted from its own
recorded dispatches by the time model (`sim/timemodel.py`, roofline with host-copy exchange)
fitted on the other four systems' runs (leave one system out). Target: within 20%. The policy's decision (host Python, the
control plane) is measured and printed beside it; the simulator does not charge it.

  .venv/bin/python benchmarks/sim_calibration.py [--model tiny-mixtral] [--workers 4] [--max-requests 24]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="built-in model or checkpoint (repeatable); "
                        "default: tiny-mixtral and tiny-olmoe")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "calibration")
    args = parser.parse_args()

    from moeless_cli.bench.compare import run_bench
    from moeless_cli.bench.pipeline import BenchRequest

    print(f"{'model':14s} {'system':14s} {'real ms':>8s} {'decision':>8s} {'data ms':>8s} {'sim ms':>8s} "
          f"{'err mean':>8s} {'no stalls':>9s} {'stalls':>6s} {'err p50':>8s} {'|err| layer':>11s}")
    worst = 0.0
    for model in args.model or ["tiny-mixtral", "tiny-olmoe"]:
        started = time.perf_counter()
        request = BenchRequest(model=model, mode="real", gpus=args.workers, max_requests=args.max_requests,
                               out=args.out / Path(model).name)
        check = run_bench(request)["simulator_check"]
        for name, row in check["systems"].items():
            print(f"{Path(model).name:14s} {name:14s} {row['real_ms']:8.4f} {row['control_ms']:8.4f} "
                  f"{row['data_plane_ms']:8.4f} {row['sim_ms']:8.4f} {row['error']:+8.1%} "
                  f"{row['error_without_stalls']:+9.1%} {row['stalls']:6d} {row['p50_error']:+8.1%} "
                  f"{row['median_abs_layer_error']:11.1%}")
        fit = check["fit"]
        print(f"  fitted on all runs: {fit['row_us']:.3f} us/row, {fit['replica_us']:.1f} us/replica, "
              f"{fit['layer_fixed_us']:.0f} us/layer + {fit['exchange_row_us']:.3f} us/row exchanged; worst error of "
              f"the mean {check['max_abs_error']:.1%}, without host stalls {check['max_abs_error_without_stalls']:.1%}; "
              f"{time.perf_counter() - started:.0f} s")
        worst = max(worst, check["max_abs_error_without_stalls"])
    print(f"worst error of the mean without host stalls, every system held out in turn: {worst:.1%} (target 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
