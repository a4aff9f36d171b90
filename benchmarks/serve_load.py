"""Sustained load: the Azure conversation trace at 4x and 16x its arrival rate through `moeless serve`.

For each rate multiplier R (--rates, default 4 and 16) the run submits every request of the
built-in `azure-conv` trace that arrives in the first --minutes (default 3) once its timestamps are
compressed R-fold (`time_scale=R`; the trace averages 5.5 requests/s, so 4x is ~22/s and 16x ~88/s),
serves them on the built-in tiny-mixtral (local backend, 4 CPU workers, continuous batching,
prompts capped at --max-prompt-tokens, outputs at --max-output-tokens) and waits until every
request is done. A CPU that cannot keep up queues the excess: the run then lasts longer than the
arrival window (the drain), and TTFT shows the queueing.

Checked and printed per rate:
- submitted = completed + failed, with failed = 0 (exit 1 otherwise);
- resident memory (RSS, sampled twice a second from the first finished request on): the median of
  the first minute against the median of the last minute (windows shrink to a third of the run
  when it is under 3 minutes); goal: growth < 10% (exit 1 otherwise).
--quick uses a 10-second arrival window per rate (about 20 s each with the drain here).

    .venv/bin/python benchmarks/serve_load.py [--minutes 3] [--rates 4,16] [--quick] [--out load.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

GOAL_GROWTH = 0.10  # RSS growth from the first to the last minute must stay under this
WINDOW_S = 60.0  # "the first / the last minute"


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples RSS every `period` seconds on a daemon thread, from `start()` until `stop()`."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.samples: list[tuple[float, int]] = []  # (perf_counter seconds, RSS bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = False

    def start(self) -> None:
        """Idempotent: the serve job calls it on every finished request."""
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            self._stop.wait(self.period)


def growth(samples: list[tuple[float, int]]) -> dict[str, Any]:
    """samples: (seconds, bytes) in time order. Median RSS of the first and the last window."""
    if len(samples) < 2:
        return {"first_mb": None, "last_mb": None, "growth": None, "window_s": 0.0, "samples": len(samples)}
    start, end = samples[0][0], samples[-1][0]
    window = min(WINDOW_S, (end - start) / 3)
    first = [b for t, b in samples if t <= start + window] or [samples[0][1]]
    last = [b for t, b in samples if t >= end - window] or [samples[-1][1]]
    first_mb, last_mb = statistics.median(first) / 2**20, statistics.median(last) / 2**20
    return {"first_mb": first_mb, "last_mb": last_mb, "growth": last_mb / first_mb - 1, "window_s": window,
            "peak_mb": max(b for _, b in samples) / 2**20, "samples": len(samples), "serving_s": end - start}


def requests_in_window(rate: float, window_s: float) -> int:
    """How many azure-conv requests arrive within window_s seconds at `rate` times the trace's rate."""
    import numpy as np

    from moeless_cli.workloads.traces import load_trace

    arrivals = load_trace("azure-conv").arrival_s
    return int(np.count_nonzero(arrivals / rate < window_s))


def run_rate(rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """Serve the window's requests at `rate`; returns the figures and whether the checks held."""
    from moeless_cli.jobs.serve import serve
    from moeless_cli.serving.setup import ServeOptions

    window_s = args.window_s
    count = requests_in_window(rate, window_s)
    options = ServeOptions(model=args.model, trace="azure-conv", time_scale=rate, max_requests=count,
                           max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                           workers=args.workers, max_batch=args.max_batch, token_budget=args.token_budget)
    sampler = RssSampler()
    before = rss_bytes()
    started = time.perf_counter()
    try:
        report = serve(options, progress=lambda done, submitted: sampler.start()).report
    finally:
        sampler.stop()
    wall = time.perf_counter() - started
    req = report["requests"]
    memory = growth(sampler.samples)
    accounted = req["submitted"] == req["completed"] + req["failed"] == count and req["failed"] == 0
    return {"rate": rate, "arrival_window_s": window_s, "requests": req, "accounted": accounted,
            "wall_s": wall, "served_per_s": req["completed"] / memory["serving_s"] if memory.get("serving_s") else None,
            "arrivals_per_s": count / window_s, "ttft_s": report["latency_s"]["ttft"],
            "tokens_per_s": report["throughput_tokens_per_s"], "rss_before_mb": before / 2**20, "rss": memory,
            "memory_ok": memory["growth"] is not None and memory["growth"] < GOAL_GROWTH}


def print_row(r: dict[str, Any]) -> None:
    req, m, ttft = r["requests"], r["rss"], r["ttft_s"]
    print(f"{r['rate']:>4g}x  arrivals {r['arrivals_per_s']:5.1f}/s for {r['arrival_window_s']:4.0f} s  "
          f"submitted {req['submitted']:6d} = completed {req['completed']:6d} + failed {req['failed']}  "
          f"[{'ok' if r['accounted'] else 'FAILED'}]")
    print(f"      served {r['served_per_s'] or 0:5.1f}/s, wall {r['wall_s']:6.1f} s, {r['tokens_per_s']:6.1f} tokens/s, "
          f"TTFT p50 {ttft['p50']:.2f} s p99 {ttft['p99']:.2f} s")
    print(f"      RSS first {m['window_s']:.0f} s {m['first_mb']:.1f} MB -> last {m['window_s']:.0f} s "
          f"{m['last_mb']:.1f} MB: {100 * m['growth']:+.2f}% (goal < {100 * GOAL_GROWTH:.0f}%) "
          f"[{'ok' if r['memory_ok'] else 'OVER'}]; peak {m['peak_mb']:.1f} MB, before the run "
          f"{r['rss_before_mb']:.1f} MB, {m['samples']} samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="arrival window per rate, in minutes")
    parser.add_argument("--quick", action="store_true", help="a 10-second arrival window per rate")
    parser.add_argument("--rates", default="4,16", help="comma-separated multipliers of the trace's rate")
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-prompt-tokens", type=int, default=8)
    parser.add_argument("--max-output-tokens", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=64, help="requests running at once")
    parser.add_argument("--token-budget", type=int, default=1024, help="tokens per iteration")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON (atomically)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    args.window_s = 10.0 if args.quick else 60.0 * args.minutes
    results = []
    for rate in (float(r) for r in args.rates.split(",")):
        results.append(run_rate(rate, args))
        print_row(results[-1])
    if args.out is not None:
        from moeless_cli.fileio import write_json_atomic

        write_json_atomic(args.out, {"model": args.model, "trace": "azure-conv", "runs": results,
                                     "goal_growth": GOAL_GROWTH})
        print(f"wrote {args.out}")
    return 0 if all(r["accounted"] and r["memory_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
