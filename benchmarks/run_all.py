"""Run every benchmark in this folder, one after another, with its defaults (`make bench`).

Each script prints its own side-by-side table and ratios; this runner only sequences them and
prints a summary of which ones finished. Pass script names to run a subset:

    .venv/bin/python benchmarks/run_all.py [plan_balance profile_overhead ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Fast, model-free ones first; the whole-pipeline comparison last.
ORDER = (
    "plan_balance",
    "plan_solve_time",
    "bench_dispatch",
    "profile_overhead",
    "serve_throughput",
    "predictor_accuracy",
    "sim_calibration",
    "bench_systems",
)


def main(argv: list[str]) -> int:
    names = argv or list(ORDER)
    unknown = [n for n in names if not (HERE / f"{n}.py").is_file()]
    if unknown:
        print(f"error: unknown benchmark(s): {', '.join(unknown)} (have: {', '.join(ORDER)})", file=sys.stderr)
        return 2
    results: list[tuple[str, int, float]] = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        results.append((name, code, time.perf_counter() - start))
    print("\n===== summary =====")
    for name, code, seconds in results:
        print(f"{name:20s} {'ok' if code == 0 else f'FAILED (exit {code})':16s} {seconds:7.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
