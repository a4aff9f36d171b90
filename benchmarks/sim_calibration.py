"""The simulator against real mode on this machine: its error on MoE-layer time, per system.

Runs `moeless bench --mode real` (every system through serve's runtime, CPU workers) on a built-in
model and prints the simulator check: each system's MoE-layer time is predicted from its own
recorded dispatches by the time model (`sim/timemodel.py`, roofline with host-copy exchange)
fitted on the other four systems' runs (leave one system out). Target: within 20%. The policy's decision (host Python, the
control plane) is measured and printed beside it; the simulator does not charge it.

  .venv/bin/python benchmarks/sim_calibration.py [--model tiny-mixtral] [--workers 4] [--max-requests 24]
      [--repeats 3] [--json F]  (~8 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="built-in model or checkpoint (repeatable); "
                        "default: tiny-mixtral and tiny-olmoe")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "calibration")
    parser.add_argument("--repeats", type=int, default=3, help="real runs of every system per model")
    parser.add_argument("--json", type=Path, help="also write every model's simulator checks here")
    parser.add_argument("--render", type=Path, help="print markdown tables from a --json file and exit")
    args = parser.parse_args()
    if args.render:
        print(markdown_summary(json.loads(args.render.read_text())))
        return 0

    from moeless_cli.jobs.bench import BenchRequest, run_bench

    print(f"{'model':14s} {'system':14s} {'real ms':>8s} {'decision':>8s} {'data ms':>8s} {'sim ms':>8s} "
          f"{'err mean':>8s} {'no stalls':>9s} {'stalls':>6s} {'err p50':>8s} {'|err| layer':>11s}")
    checks: dict[str, list[dict]] = {}
    for model in args.model or ["tiny-mixtral", "tiny-olmoe"]:
        name_of_model = Path(model).name
        for repeat in range(args.repeats):
            started = time.perf_counter()
            request = BenchRequest(model=model, mode="real", gpus=args.workers, max_requests=args.max_requests,
                                   out=args.out / name_of_model)
            check = run_bench(request).simulator_check
            checks.setdefault(name_of_model, []).append(check)
            if args.json:
                args.json.write_text(json.dumps(checks, indent=1))
            for name, row in check["systems"].items():
                print(f"{name_of_model:14s} {name:14s} {row['real_ms']:8.4f} {row['control_ms']:8.4f} "
                      f"{row['data_plane_ms']:8.4f} {row['sim_ms']:8.4f} {row['error']:+8.1%} "
                      f"{row['error_without_stalls']:+9.1%} {row['stalls']:6d} {row['p50_error']:+8.1%} "
                      f"{row['median_abs_layer_error']:11.1%}")
            fit = check["fit"]
            print(f"  run {repeat + 1}/{args.repeats}, fitted on all runs: {fit['row_us']:.3f} us/row, "
                  f"{fit['replica_us']:.1f} us/replica, {fit['layer_fixed_us']:.0f} us/layer + "
                  f"{fit['exchange_row_us']:.3f} us/row exchanged; {time.perf_counter() - started:.0f} s")
    print("\nmedian over repeats of each held-out system's error (the host is shared: runs vary)")
    print(f"{'model':14s} {'system':14s} {'err mean':>9s} {'no stalls':>9s} {'err p50':>9s}")
    worst = {"error": 0.0, "error_without_stalls": 0.0, "p50_error": 0.0}
    for model, runs in checks.items():
        for name in runs[0]["systems"]:
            medians = {k: float(np.median([run["systems"][name][k] for run in runs])) for k in worst}
            worst = {k: max(worst[k], abs(medians[k])) for k in worst}
            print(f"{model:14s} {name:14s} {medians['error']:+9.1%} {medians['error_without_stalls']:+9.1%} "
                  f"{medians['p50_error']:+9.1%}")
    print(f"worst of those: error of the mean {worst['error']:.1%}, without host stalls "
          f"{worst['error_without_stalls']:.1%}, of the median {worst['p50_error']:.1%} (target 20%)")
    return 0


def markdown_summary(checks: dict[str, list[dict]]) -> str:
    """Per model and held-out system: medians over the repeats of measured and simulated times and errors."""
    lines = ["| model | system | real MoE ms | of which decision | data plane ms | simulated ms | error of the mean "
             "| without host stalls | error of the median | worst run (mean) |", "|" + "---|" * 10]
    for model, runs in checks.items():
        for name in runs[0]["systems"]:
            rows = [run["systems"][name] for run in runs]
            med = {k: float(np.median([r[k] for r in rows])) for k in
                   ("real_ms", "control_ms", "data_plane_ms", "sim_ms", "error", "error_without_stalls", "p50_error")}
            worst = max((r["error"] for r in rows), key=abs)
            lines.append(f"| {model} | {name} | {med['real_ms']:.4f} | {med['control_ms']:.4f} | {med['data_plane_ms']:.4f} "
                         f"| {med['sim_ms']:.4f} | {med['error']:+.1%} | {med['error_without_stalls']:+.1%} "
                         f"| {med['p50_error']:+.1%} | {worst:+.1%} |")
    fits = "; ".join(f"{model}: " + ", ".join(f"{run['fit']['row_us']:.2f} us/row + {run['fit']['replica_us']:.0f} us/replica"
                                               for run in runs) for model, runs in checks.items())
    return "\n".join(lines) + f"\n\nMedians over {len(next(iter(checks.values())))} repeats. Fitted on all runs, per repeat: {fits}."


if __name__ == "__main__":
    sys.exit(main())
