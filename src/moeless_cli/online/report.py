"""serve's fixed `--json` core, shared by bench (one per system): latency, throughput, cost, functions.

Costs, three ways (all from the same run):
- `gbs_proxy`: the MoEless paper's memory x time proxy in GB·s. Serverful systems (static EP, EPLB,
  Oracle) reserve their replicas' memory for the whole run; serverless ones pay per invocation
  (instance GB x the time its layer ran). `gbs_live` beside it is the memory actually held by live
  instances, keep-alive idle time included, for the serverless systems too.
- `serverless_gpu_s`: GPU-seconds billed only while a GPU works on an MoE layer (sum over GPUs).
- `serverful_gpu_s`: every GPU for the whole run (G x makespan).
`usd_*` multiply the GPU-seconds by the hardware's hourly price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from moeless_cli.online.functions import FunctionCounters, FunctionPool


@dataclass
class CostTotals:
    gbs_proxy: float  # GB·s as each system would be billed (see module doc)
    gbs_live: float  # GB·s of live instances, keep-alive included
    serverless_gpu_s: float  # GPU-seconds of MoE-layer work
    serverful_gpu_s: float  # GPUs x makespan
    usd_per_gpu_hour: float  # hardware price used for the usd fields


def pool_gbs(pool: FunctionPool, serverful: bool, now: float) -> tuple[float, float]:
    """(gbs_proxy, gbs_live) of a run's pool up to `now` (see the module doc)."""
    live = pool.live_gb_seconds(now)
    return (live if serverful else pool.busy_gbs), live


def latency_stats(values: Iterable[float], percentiles: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """{"mean", "p50", ...} of the values; None entries when there are none."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    keys = ["mean", *[f"p{p}" for p in percentiles]]
    if array.size == 0:
        return {k: None for k in keys}
    out: dict[str, float | None] = {"mean": float(array.mean())}
    for p in percentiles:
        out[f"p{p}"] = float(np.percentile(array, p))
    return out


def build_report(
    policy: str,
    lossy: bool,
    timings: Iterable[Any],
    moe_layer_s: np.ndarray,
    generated_tokens: int,
    makespan_s: float,
    cost: CostTotals,
    functions: FunctionCounters,
    replicas: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON core of one system's run.

    timings: per-request objects with `failed`, `finish_s`, `ttft_s`, `tpot_s`, `e2e_s`
    (online.batching.RequestTiming); moe_layer_s: [layer executions] seconds of each MoE layer.
    """
    timings = list(timings)
    completed = [t for t in timings if not t.failed and t.finish_s is not None]
    failed = sum(1 for t in timings if t.failed)
    layer_ms = np.asarray(moe_layer_s, dtype=np.float64) * 1e3
    hourly = cost.usd_per_gpu_hour / 3600.0
    report: dict[str, Any] = {
        "policy": policy,
        "lossy": bool(lossy),
        "requests": {"submitted": len(timings), "completed": len(completed), "failed": failed},
        "latency_s": {
            "ttft": latency_stats(t.ttft_s for t in completed),
            "tpot": latency_stats(t.tpot_s for t in completed),
            "e2e": latency_stats(t.e2e_s for t in completed),
        },
        "moe_layer_ms": latency_stats(layer_ms, (50, 99)),
        "throughput_tokens_per_s": float(generated_tokens / makespan_s) if makespan_s > 0 else 0.0,
        "cost": {
            "gbs_proxy": float(cost.gbs_proxy),
            "gbs_live": float(cost.gbs_live),
            "serverless_gpu_s": float(cost.serverless_gpu_s),
            "serverful_gpu_s": float(cost.serverful_gpu_s),
            "usd_serverless": float(cost.serverless_gpu_s * hourly),
            "usd_serverful": float(cost.serverful_gpu_s * hourly),
        },
        "functions": {
            "cold_starts": int(functions.cold_starts),
            "warm_hits": int(functions.warm_hits),
            "created": int(functions.created),
            "retired": int(functions.retired),
            "bytes_moved": float(functions.bytes_moved),
        },
        "makespan_s": float(makespan_s),
        "generated_tokens": int(generated_tokens),
    }
    if replicas is not None:
        report["replicas"] = {k: float(v) for k, v in replicas.items()}
    return report
