"""serve's fixed `--json` core, shared by bench (one per system): latency, throughput, cost, functions;
and `serve_report`, the one writer of serve's whole report.

Costs (all from the same run's function pool, `online/functions.py`). One billing rule for every
system, two figures:
- `gbs_live` (the headline): GB·s of every live instance over its lifetime, keep-alive idle time and
  pinned instances included: what a serverless GPU platform bills, and what a reserved cluster pays.
- `gbs_per_invocation`: GB·s of each invocation (instance GB x the time its layer ran), for every
  system alike: the MoEless paper's proxy, applied to all.
- `gbs_proxy`: the paper's asymmetric comparison, kept as published: serverful systems (static EP,
  EPLB, Oracle) pay `gbs_live`, serverless ones (moeless-paper, moeless) `gbs_per_invocation`. It
  compares two billing rules, not two systems.
- `serverless_gpu_s`: GPU-seconds billed only while a GPU works on an MoE layer (sum over GPUs).
- `serverful_gpu_s`: every GPU for the whole run (G x makespan).
`usd_*` multiply the GPU-seconds by the hardware's hourly price.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from moeless_cli.online.functions import FunctionCounters, FunctionPool


@dataclass
class CostTotals:
    gbs_proxy: float  # the paper's asymmetric rule: serverful gbs_live, serverless gbs_per_invocation
    gbs_live: float  # GB·s of live instances over their lifetime, keep-alive and pinned included
    gbs_per_invocation: float  # GB·s of each invocation (instance GB x its layer's time), every system
    serverless_gpu_s: float  # GPU-seconds of MoE-layer work
    serverful_gpu_s: float  # GPUs x makespan
    usd_per_gpu_hour: float  # hardware price used for the usd fields

    @classmethod
    def from_pool(cls, pool: FunctionPool, serverful: bool, now: float, serverless_gpu_s: float,
                  serverful_gpu_s: float, usd_per_gpu_hour: float) -> "CostTotals":
        """A run's costs: its pool's GB·s up to `now` (see the module doc) and the GPU-seconds given."""
        live, per_invocation = pool.live_gb_seconds(now), pool.busy_gbs
        return cls(gbs_proxy=live if serverful else per_invocation, gbs_live=live,
                   gbs_per_invocation=per_invocation, serverless_gpu_s=serverless_gpu_s,
                   serverful_gpu_s=serverful_gpu_s, usd_per_gpu_hour=usd_per_gpu_hour)


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
            "gbs_per_invocation": float(cost.gbs_per_invocation),
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


@dataclass
class ServeMeasurements:
    """What one `serve` run measured (all ranks' weight copies summed under dist), and what it ran."""

    options: dict[str, Any]  # the ServeOptions as JSON (echoed; backend, devices, ... are read from it)
    model: str  # model id
    workers: int  # expert-parallel workers used
    num_layers: int  # MoE layers of the model
    policy: str  # the policy's name
    lossy: bool  # the policy changed the routing (oracle)
    timings: list[Any]  # per request: online.batching.RequestTiming
    layers: Sequence[Any]  # per MoE layer call, in order: serving.runtime.LayerTiming (layer, moe_s, *_s)
    predict_s: list[float]  # [layer calls] predict + scale + place (the online step)
    predictor_method: str | None  # which predictor models the policy used; None: no forecasts
    predictions: int  # forecasts made
    cost: CostTotals
    functions: FunctionCounters  # the policy's function pool
    functions_measured: dict[str, float]  # the runtime's real weight copies (serving.lifecycle counters)
    makespan_s: float  # wall time of the run
    interrupted: bool  # Ctrl-C stopped the run: the report is partial
    errors: list[str]  # failed iterations' errors, in order
    outputs: dict[int, list[int]]  # request id -> generated token ids
    split_modes: dict[str, int] = field(default_factory=dict)  # device split calls per mode (primary, balanced)


def _moe_layer_parts_ms(layers: Sequence[Any]) -> dict[str, dict[str, float | None]]:
    """Latency stats of each piece of the MoE layer calls, in ms."""
    worker_ms = (np.array([t.worker_s for t in layers]) * 1e3).mean(axis=1) if layers else []
    return {
        "dispatch": latency_stats([t.dispatch_s * 1e3 for t in layers], (50, 99)),
        "slowest_worker": latency_stats([max(t.worker_s) * 1e3 for t in layers], (50, 99)),
        "mean_worker": latency_stats(worker_ms, (50, 99)),
        "combine": latency_stats([t.combine_s * 1e3 for t in layers], (50, 99)),
        "decide": latency_stats([t.decide_s * 1e3 for t in layers], (50, 99)),  # within dispatch
    }


def serve_report(m: ServeMeasurements) -> dict[str, Any]:
    """serve's `--json` report: the fixed core (`build_report`) and serve's own keys, in one place."""
    layers, options = m.layers, m.options
    core = build_report(m.policy, m.lossy, m.timings, np.array([t.moe_s for t in layers], dtype=np.float64),
                        sum(t.generated for t in m.timings), m.makespan_s, m.cost, m.functions)
    return core | {
        "model": m.model,
        "backend": options["backend"],
        "workers": m.workers,
        "devices": list(options["devices"]),
        "batching": options["batching"],
        "trace": options["trace"],
        "dataset": options["dataset"],
        "moe_layer_ms_per_layer": [latency_stats([t.moe_s * 1e3 for t in layers if t.layer == layer], (50, 99))
                                   for layer in range(m.num_layers)],
        "moe_layer_parts_ms": _moe_layer_parts_ms(layers),
        "device_split_modes": dict(sorted(m.split_modes.items())),  # calls per mode; {} when the split ran on the host
        "online_step_ms": latency_stats(np.array(m.predict_s) * 1e3, (50, 99)),
        "predictor": {"path": options["predictor"], "method": m.predictor_method, "predictions": m.predictions},
        "functions_measured": dict(m.functions_measured),
        "options": options,
        "interrupted": m.interrupted,
        "errors": m.errors[:10],
        "outputs": {str(rid): m.outputs[rid] for rid in sorted(m.outputs)},
    }
