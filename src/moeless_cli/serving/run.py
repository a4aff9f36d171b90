"""The `serve` job: check inputs, load the model, install the runtime, run the trace, report."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.serving.setup import (
    ServeOptions,
    build_workload,
    check_options,
    check_plan_cheaply,
    check_plan_shape,
    check_predictor,
    slots_per_gpu,
    load_history,
)

ProgressFn = Callable[[int, int], None]  # (requests done, submitted)


def _model_identity(model: str) -> str:
    from moeless_cli.models.loading import config_hash, read_model_config, resolve_model_path

    return config_hash(read_model_config(resolve_model_path(model)))


def prepare(o: ServeOptions) -> tuple[Any, Any, Any, Any, Any]:
    """Checks first (cheap, nothing loaded), then model, plan, predictor, policy. No replica is
    copied here: `ExpertParallelRuntime.install()` does that."""
    from moeless_cli.models import load_moe_model
    from moeless_cli.online.functions import FunctionPool
    from moeless_cli.online.policies import PolicySetting, make_policy
    from moeless_cli.predictor.store import load_predictor

    check_options(o)
    chash = _model_identity(o.model)
    if o.predictor is not None:
        check_predictor(o.predictor, chash)
    plan = None
    if o.plan is not None:  # model and GPU count before loading the model; shapes after
        plan = check_plan_cheaply(o.plan, chash, o.workers)
    device = o.devices[0] if o.devices and o.devices[0].startswith("cuda") else "cpu"
    loaded = load_moe_model(o.model, device=device, dtype=o.dtype)
    if plan is not None:
        check_plan_shape(plan, o.plan, loaded.num_moe_layers, loaded.num_experts)
    workers = o.workers or (plan.num_gpus if plan is not None else 4)
    setting = PolicySetting(
        num_layers=loaded.num_moe_layers, num_experts=loaded.num_experts, num_gpus=workers,
        slots_per_gpu=slots_per_gpu(loaded.num_experts, workers, plan),
        history=load_history(o.profile, chash, loaded.num_moe_layers, loaded.num_experts), plan=plan,
    )
    pool = FunctionPool(num_gpus=workers, expert_bytes=float(loaded.expert_bytes), keep_alive_s=o.keep_alive_s)
    policy = make_policy(o.policy, setting, pool)
    predictor = load_predictor(o.predictor, chash) if o.predictor is not None else None
    return loaded, policy, pool, predictor, workers


def warm_up(loaded: Any, runtime: Any) -> None:
    """One tiny forward so one-time kernel set-up (~0.5 s on CPU) is not billed to the first request."""
    import torch

    from moeless_cli.serving.runtime import RuntimeStats

    with torch.no_grad():
        loaded.model(input_ids=torch.ones((1, 2), dtype=torch.long, device=loaded.model.device))
    runtime.stats = RuntimeStats()


def serve(o: ServeOptions, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Serve the workload and return the report (partial, marked interrupted, after Ctrl-C).

    On CPU-only runs torch uses one thread per request thread (tiny expert matmuls from several
    threads oversubscribe the cores otherwise); the setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    if all(not d.startswith("cuda") for d in o.devices):
        torch.set_num_threads(1)
    try:
        return _serve(o, progress)
    finally:
        torch.set_num_threads(before)


def _serve(o: ServeOptions, progress: ProgressFn | None) -> dict[str, Any]:
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    if o.backend == "dist":
        from moeless_cli.serving.launch import launch_dist

        return launch_dist(o)
    loaded, policy, pool, predictor, num_workers = prepare(o)
    workload = build_workload(o, loaded.tokenizer)
    workers = make_local_workers(num_workers, list(o.devices))
    runtime = ExpertParallelRuntime(loaded, workers, policy, predictor, o.distance)
    runtime.install()
    warm_up(loaded, runtime)
    return serve_loop(o, loaded, policy, pool, runtime, workload, num_workers, progress)


def serve_loop(o: ServeOptions, loaded: Any, policy: Any, pool: Any, runtime: Any, workload: Any, num_workers: int,
               progress: ProgressFn | None = None, sync_now: Callable[[float], float] | None = None,
               fatal: bool = False) -> dict[str, Any]:
    """Run the trace through continuous (or paper) batching until every request is done.

    sync_now: makes every process see the same clock (dist backend: rank 0's, broadcast each step).
    fatal: any failed iteration stops the run (dist: a failed collective cannot be retried).
    """
    from moeless_cli.online.batching import ContinuousBatcher, PaperBatcher, next_event_s
    from moeless_cli.serving.engine import ServeEngine

    if o.batching == "paper":
        scheduler, threads = PaperBatcher(), 8  # grows to the largest batch
    else:
        scheduler, threads = ContinuousBatcher(o.token_budget, o.max_batch), o.max_batch
    for request in workload.requests:
        scheduler.add(request)
    engine = ServeEngine(loaded.model, runtime, workload.prompts, threads)
    errors: list[str] = []
    interrupted = False
    t0 = time.perf_counter()
    runtime.started = t0  # the pool's clock and the trace's clock agree

    def clock() -> float:
        now = time.perf_counter() - t0
        return sync_now(now) if sync_now is not None else now

    done = 0
    try:
        while scheduler.has_work():
            iteration = scheduler.next_iteration(clock())
            if not iteration:
                wake = next_event_s(scheduler)
                time.sleep(max(0.0, min(1.0, (wake if wake is not None else 0.0) - clock())))
                continue
            try:
                engine.run(iteration)
            except (MoelessError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a failed forward fails its requests; they are counted
                if fatal:
                    raise
                errors.append(f"{type(exc).__name__}: {exc}")
                for rid in iteration.request_ids:
                    scheduler.fail(rid, clock())
                    engine.drop(rid)
                continue
            for rid in scheduler.complete(iteration, clock()):
                engine.drop(rid)
            finished = sum(1 for t in scheduler.timings.values() if t.done)
            if progress is not None and finished != done:
                done = finished
                progress(done, len(workload.requests))
    except KeyboardInterrupt:
        interrupted = True
        for rid, t in scheduler.timings.items():
            if not t.done:
                scheduler.fail(rid, clock())
    finally:
        engine.close()
    makespan = clock()
    runtime.ledger.close(makespan)
    report = _report(o, policy, pool, runtime, scheduler, makespan, num_workers, loaded)
    report["interrupted"] = interrupted
    report["errors"] = errors[:10]
    report["outputs"] = {str(rid): engine.generated[rid] for rid in sorted(engine.generated)}
    return report


def _report(o: ServeOptions, policy: Any, pool: Any, runtime: Any, scheduler: Any, makespan: float,
            num_workers: int, loaded: Any) -> dict[str, Any]:
    from moeless_cli.online.report import CostTotals, build_report, latency_stats, pool_gbs

    layers = runtime.stats.layers
    moe_s = np.array([t.moe_s for t in layers], dtype=np.float64)  # [layer calls]
    busy = np.array(runtime.stats.busy_workers, dtype=np.float64)  # [layer calls]
    gbs_proxy, gbs_live = pool_gbs(pool, policy.serverful, makespan)
    cost = CostTotals(
        gbs_proxy=gbs_proxy,
        gbs_live=gbs_live,
        serverless_gpu_s=float((moe_s * busy).sum()),
        serverful_gpu_s=num_workers * makespan,
        usd_per_gpu_hour=o.gpu_price_per_hour,
    )
    timings = list(scheduler.timings.values())
    report = build_report(policy.name, policy.lossy, timings, moe_s,
                          sum(t.generated for t in timings), makespan, cost, pool.counters)
    per_layer = [latency_stats([t.moe_s * 1e3 for t in layers if t.layer == layer], (50, 99))
                 for layer in range(loaded.num_moe_layers)]
    worker_ms = np.array([t.worker_s for t in layers]) * 1e3 if layers else np.zeros((0, num_workers))
    report.update({
        "model": loaded.model_id,
        "backend": o.backend,
        "workers": num_workers,
        "devices": list(o.devices),
        "batching": o.batching,
        "trace": o.trace,
        "dataset": o.dataset,
        "moe_layer_ms_per_layer": per_layer,
        "moe_layer_parts_ms": {
            "dispatch": latency_stats([t.dispatch_s * 1e3 for t in layers], (50, 99)),
            "slowest_worker": latency_stats([max(t.worker_s) * 1e3 for t in layers], (50, 99)),
            "mean_worker": latency_stats(worker_ms.mean(axis=1) if layers else [], (50, 99)),
            "combine": latency_stats([t.combine_s * 1e3 for t in layers], (50, 99)),
            "decide": latency_stats([t.decide_s * 1e3 for t in layers], (50, 99)),  # within dispatch
        },
        "online_step_ms": latency_stats(np.array(runtime.stats.predict_s) * 1e3, (50, 99)),
        "predictor": {"path": None if o.predictor is None else str(o.predictor),
                      "method": runtime.predictor_method, "predictions": runtime.stats.predictions},
        "functions_measured": asdict(runtime.ledger.counters),
        "options": {k: (str(v) if v is not None and not isinstance(v, (int, float, str, bool, list, tuple)) else v)
                    for k, v in asdict(o).items()},
    })
    if o.record_layers:  # the local backend's workers only (a dist rank times its own worker)
        report["layer_records"] = {
            "worker_s": [t.worker_s for t in layers if t.worker_tokens],
            "worker_rows": [t.worker_tokens for t in layers if t.worker_tokens],
            "worker_replicas": [t.worker_replicas for t in layers if t.worker_tokens],
            "exchange_s": [t.dispatch_s + t.combine_s - t.decide_s for t in layers if t.worker_tokens],
            "decide_s": [t.decide_s for t in layers if t.worker_tokens],
            "cold_s": [t.cold_s for t in layers if t.worker_tokens],
        }
    return report
