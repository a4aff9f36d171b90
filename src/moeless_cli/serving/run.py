"""The local `serve` path, and the pieces the dist ranks share: load the model, install the
runtime, run the trace, gather what was measured. The entry point is `moeless_cli.jobs.serve`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.online.report import CostTotals, ServeMeasurements, serve_report
from moeless_cli.serving.setup import (
    ServeOptions,
    build_workload,
    capped_slots_per_gpu,
    check_inputs,
    check_plan_shape,
    load_history,
)

ProgressFn = Callable[[int, int], None]  # (requests done, submitted)
ClockFn = Callable[[], float]  # seconds since the trace started (the same on every dist rank)


@dataclass
class Prepared:
    loaded: Any  # models.LoadedModel, weights loaded
    policy: Any  # the online policy (online.policies)
    pool: Any  # its online.functions.FunctionPool
    predictor: Any  # predictor.store.LoadPredictor or None
    workers: int  # expert-parallel workers
    replica_bytes: int  # one expert over all MoE layers, as loaded (what --expert-memory-mb counts)
    trace: Any  # the checked --trace (workloads.traces.Trace), read once


def prepare(o: ServeOptions, load_device: str | None = None) -> Prepared:
    """Checks first (cheap, nothing loaded), then model, plan, predictor, policy. No replica is
    copied here: `ExpertParallelRuntime.install()` does that.

    load_device: where the model loads (the dist ranks load on the CPU and move the dense weights
    to their GPU once the experts are freed); None: the first device. The dtype is the serving
    device's either way."""
    from moeless_cli.models import load_moe_model
    from moeless_cli.online.functions import FunctionPool
    from moeless_cli.online.policies import PolicySetting, make_policy
    from moeless_cli.predictor.store import load_predictor

    checked = check_inputs(o)
    plan, workers = checked.plan, checked.workers
    cuda = o.devices[0] if o.devices and o.devices[0].startswith("cuda") else None
    dtype = "auto" if o.dtype is None and cuda else o.dtype  # what loading on the GPU itself would give
    loaded = load_moe_model(o.model, device=load_device or cuda or "cpu", dtype=dtype)
    if plan is not None:
        check_plan_shape(plan, o.plan, loaded.num_moe_layers, loaded.num_experts)
    replica_bytes = loaded.expert_params * next(loaded.experts(0).parameters()).element_size() * loaded.num_moe_layers
    setting = PolicySetting(
        num_layers=loaded.num_moe_layers, num_experts=loaded.num_experts, num_gpus=workers,
        slots_per_gpu=capped_slots_per_gpu(loaded.num_experts, workers, plan, o.expert_memory_mb, replica_bytes),
        history=load_history(o.profile, checked.config_hash, loaded.num_moe_layers, loaded.num_experts), plan=plan,
    )
    pool = FunctionPool(num_gpus=workers, expert_bytes=float(loaded.expert_bytes), keep_alive_s=o.keep_alive_s)
    policy = make_policy(o.policy, setting, pool)
    predictor = load_predictor(o.predictor, checked.config_hash) if o.predictor is not None else None
    return Prepared(loaded, policy, pool, predictor, workers, replica_bytes, checked.trace)


def warm_up(loaded: Any, runtime: Any) -> None:
    """One tiny forward so one-time kernel set-up (~0.5 s on CPU) is not billed to the first request."""
    import torch

    from moeless_cli.serving.runtime import RuntimeStats

    with torch.no_grad():
        loaded.model(input_ids=torch.ones((1, 2), dtype=torch.long, device=loaded.model.device))
    runtime.stats = RuntimeStats()


def serve_local(o: ServeOptions, progress: ProgressFn | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Serve the workload in this process: (the report, partial and marked interrupted after
    Ctrl-C; the layer records when o.record_layers, else None).

    On CPU-only runs torch uses one thread per request thread (tiny expert matmuls from several
    threads oversubscribe the cores otherwise); the setting is restored afterwards.
    """
    from moeless_cli.models.threads import torch_threads

    cpu_only = all(not d.startswith("cuda") for d in o.devices)
    with torch_threads(1 if cpu_only else None):
        return _serve_local(o, progress)


def _serve_local(o: ServeOptions, progress: ProgressFn | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    prepared = prepare(o)
    workload = build_workload(o, prepared.loaded.tokenizer, prepared.trace)
    workers = make_local_workers(prepared.workers, list(o.devices))
    runtime = ExpertParallelRuntime(prepared.loaded, workers, prepared.policy, prepared.predictor, o.distance)
    runtime.install()
    warm_up(prepared.loaded, runtime)
    measured = serve_loop(o, prepared, runtime, workload, LoopControl(progress=progress))
    return serve_report(measured), (layer_records(measured.layers) if o.record_layers else None)


@dataclass
class LoopControl:
    """How `serve_loop` runs beyond the options; the local backend uses the defaults."""

    progress: ProgressFn | None = None  # called with (requests done, submitted) as requests finish
    sync_now: Callable[[float], float] | None = None  # dist: every rank sees rank 0's clock, broadcast each step
    fatal: bool = False  # dist: a failed iteration stops the run (a failed collective cannot be retried)
    carried: dict[int, Any] = field(default_factory=dict)  # request id -> RequestTiming an earlier dist
    # attempt finished (after a recovery they are not run again)
    carried_outputs: dict[int, list[int]] = field(default_factory=dict)  # their generated token ids
    clock_offset_s: float = 0.0  # the trace's clock when serving starts (> 0 when a dist run restarts)
    on_done: Callable[[Any, list[int]], None] | None = None  # a request finished: (RequestTiming, token ids)


def serve_loop(o: ServeOptions, prepared: Prepared, runtime: Any, workload: Any,
               control: LoopControl | None = None) -> ServeMeasurements:
    """Run the trace through continuous (or paper) batching until every request is done; returns
    what this process measured (the carried requests' timings and outputs included)."""
    from moeless_cli.serving.engine import ServeEngine

    control = control or LoopControl()
    requests = [r for r in workload.requests if r.id not in control.carried]
    scheduler, threads = _scheduler(o, requests)
    engine = ServeEngine(prepared.loaded.model, runtime, {r.id: workload.prompts[r.id] for r in requests}, threads)
    errors: list[str] = []
    interrupted = False
    t0 = time.perf_counter() - control.clock_offset_s
    runtime.started = t0  # the pool's clock and the trace's clock agree

    def clock() -> float:
        now = time.perf_counter() - t0
        return control.sync_now(now) if control.sync_now is not None else now

    try:
        _run_until_done(scheduler, engine, clock, errors, control)
    except KeyboardInterrupt:
        interrupted = True
        for rid, t in scheduler.timings.items():
            if not t.done:
                scheduler.fail(rid, clock())
    finally:
        engine.close()
    makespan = clock()
    runtime.ledger.close(makespan)
    timings = {**control.carried, **scheduler.timings}
    return measure(o, prepared, runtime, [timings[rid] for rid in sorted(timings)], makespan, interrupted, errors,
                   {**control.carried_outputs, **engine.generated})


def _scheduler(o: ServeOptions, requests: list[Any]) -> tuple[Any, int]:
    """The batcher holding every request, and the request threads the engine starts with."""
    from moeless_cli.online.batching import ContinuousBatcher, PaperBatcher

    if o.batching == "paper":
        scheduler, threads = PaperBatcher(), 8  # grows to the largest batch
    else:
        scheduler, threads = ContinuousBatcher(o.token_budget, o.max_batch), o.max_batch
    for request in requests:
        scheduler.add(request)
    return scheduler, threads


def _run_until_done(scheduler: Any, engine: Any, clock: ClockFn, errors: list[str], control: LoopControl) -> None:
    """Iterate until the scheduler has no work; a failed iteration fails its requests and appends
    its error to `errors` (or stops the run when fatal)."""
    from moeless_cli.online.batching import next_event_s

    done, submitted = 0, len(scheduler.timings)
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
            if control.fatal:
                raise
            errors.append(f"{type(exc).__name__}: {exc}")
            for rid in iteration.request_ids:
                scheduler.fail(rid, clock())
                engine.drop(rid)
            continue
        for rid in scheduler.complete(iteration, clock()):
            engine.drop(rid)
            if control.on_done is not None:
                control.on_done(scheduler.timings[rid], engine.generated[rid])
        finished = sum(1 for t in scheduler.timings.values() if t.done)
        if control.progress is not None and finished != done:
            done = finished
            control.progress(done, submitted)


def measure(o: ServeOptions, prepared: Prepared, runtime: Any, timings: list[Any], makespan: float, interrupted: bool,
            errors: list[str], outputs: dict[int, list[int]]) -> ServeMeasurements:
    """Gather what one process measured (a dist rank: its own weight copies only). timings: every
    request's online.batching.RequestTiming, by id."""
    policy, stats = prepared.policy, runtime.stats
    moe_s = np.array([t.moe_s for t in stats.layers], dtype=np.float64)  # [layer calls]
    busy = np.array(stats.busy_workers, dtype=np.float64)  # [layer calls]
    cost = CostTotals.from_pool(prepared.pool, policy.serverful, makespan,
                                serverless_gpu_s=float((moe_s * busy).sum()),
                                serverful_gpu_s=prepared.workers * makespan, usd_per_gpu_hour=o.gpu_price_per_hour)
    return ServeMeasurements(
        options=o.to_json(), model=prepared.loaded.model_id, workers=prepared.workers,
        num_layers=prepared.loaded.num_moe_layers, policy=policy.name, lossy=policy.lossy,
        timings=timings, layers=stats.layers, predict_s=stats.predict_s,
        predictor_method=runtime.predictor_method, predictions=stats.predictions, cost=cost,
        functions=prepared.pool.counters, functions_measured=asdict(runtime.ledger.counters), makespan_s=makespan,
        interrupted=interrupted, errors=errors, outputs=outputs, split_modes=dict(stats.split_modes),
    )


def layer_records(layers: list[Any]) -> dict[str, Any]:
    """Every MoE layer call that ran rows on this process's workers (the local backend's workers;
    a dist rank times its own worker only): per-worker seconds, rows and replicas, exchange, decide
    and cold seconds. layers: serving.runtime.LayerTiming, in call order."""
    ran = [t for t in layers if t.worker_tokens]
    return {
        "worker_s": [t.worker_s for t in ran],
        "worker_rows": [t.worker_tokens for t in ran],
        "worker_replicas": [t.worker_replicas for t in ran],
        "exchange_s": [t.dispatch_s + t.combine_s - t.decide_s for t in ran],
        "decide_s": [t.decide_s for t in ran],
        "cold_s": [t.cold_s for t in ran],
    }
