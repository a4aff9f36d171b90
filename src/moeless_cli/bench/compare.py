"""Run every system on the same simulated cluster, trace and recorded routing; collect serve's JSON cores.

Each system runs closed-loop (its own speed shapes its batches: TTFT, TPOT, throughput, cost).
MoE-layer latency is compared on the same batches for every system: static EP's iteration
sequence is replayed through each policy (`moe_layer_ms`); the closed-loop figure is kept as
`moe_layer_ms_own_batches`. With `BenchRequest.pareto`, the replicating systems are swept over
replica memory per layer on the first iterations of those batches (`bench/pareto.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from moeless_cli.bench.pipeline import SYSTEMS, Say, plan_stage
from moeless_cli.bench.timeline import build_timeline
from moeless_cli.online.report import latency_stats

if TYPE_CHECKING:
    from moeless_cli.bench.request import BenchRequest, ReplaySplit
    from moeless_cli.jobs.plan import PlanSource
    from moeless_cli.planning.plan import Plan
    from moeless_cli.sim.routing import RecordedRouting

OnProgress = Callable[[str, int, int], None]
SPARE_BATCHES = 128  # sample batches the moeless plan's spare replicas are chosen on


@dataclass(frozen=True)
class SystemRuns:
    """Every system run on one workload: what bench reports beside the ratios and the stages."""

    setting: dict[str, Any]  # the cluster, model, trace and options the systems ran on
    systems: dict[str, dict[str, Any]]  # system -> serve's JSON core
    moe_layer_s: dict[str, np.ndarray]  # system -> MoE-layer seconds (the latency CDF)
    simulator_check: dict[str, Any] | None = None  # real mode: the simulator against the measured runs
    plan: dict[str, Any] | None = None  # sim mode: the moeless plan stage ({"reused", "replicas_per_layer"})
    pareto: dict[str, Any] | None = None  # sim mode with request.pareto: {"iterations", "systems", "rows"}
    ablation: list[dict[str, Any]] | None = None  # sim mode with request.ablation: bench/ablation.py's rows
    timeline: dict[str, Any] | None = None  # sim mode: live replicas over time beside arrivals (bench/timeline.py)


def run_sim(request: BenchRequest, model: str, trace: Any, profile_dir: Path, predictor_path: Path,
            split: ReplaySplit, say: Say, on_progress: OnProgress | None = None) -> SystemRuns:
    """Every system on the simulated cluster over `trace` (a workloads Trace), with routing recorded from `model`:
    the plan from split's training requests, the replay of its replay requests."""
    from moeless_cli.predictor import load_predictor
    from moeless_cli.profiling import load_profile
    from moeless_cli.sim.hardware import get_hardware
    from moeless_cli.sim.presets import get_preset
    from moeless_cli.sim.simulator import SimConfig, replica_budget
    from moeless_cli.sim.timemodel import TIME_MODEL_NOTES, ClusterModel
    from moeless_cli.workloads.prompts import PHASED_DATASETS

    preset, hardware = get_preset(request.preset), get_hardware(request.hardware)
    profile = load_profile(profile_dir)
    predictor = load_predictor(predictor_path, expected_config_hash=profile.config_hash)
    training, routing = _routings(profile, preset, predictor, split)
    cluster = ClusterModel(hardware, preset, request.gpus, request.time_model)
    slots = cluster.slots_per_gpu()
    config = SimConfig(batching=request.batching, keep_alive_s=request.keep_alive_s, equal_budget=request.equal_budget,
                       decision=request.decision,
                       request_order="phases" if request.dataset in PHASED_DATASETS else "cycle")
    budget = replica_budget(routing.num_experts, request.gpus, slots, config.redundant)
    source = _plan_source(training, request)
    plan, stage = plan_stage(request.out, request.plan_request(slots, budget), source, say)
    systems, same, schedule, live = _simulate(cluster, routing, trace, config, predictor, plan, on_progress)
    pareto = None
    if request.pareto:
        plan_for = _plans_by_budget(request, source, plan, slots, budget, say)
        pareto = _pareto(cluster, routing, (schedule or [])[:request.pareto_iterations], config, predictor, plan_for,
                         on_progress)
    setting = {
        "model": model, "model_path": str(_model_path(model)), "preset": preset.as_dict(),
        "hardware": hardware.name, "hardware_description": hardware.description,
        "gpus": request.gpus, "slots_per_gpu_per_layer": slots, "replica_budget_per_layer": budget,
        "serverless_replica_cap_per_layer": budget if request.equal_budget else slots * request.gpus,
        "trace": request.trace, "requests": len(trace),
        "dataset": request.dataset, "batching": request.batching, "time_model": request.time_model,
        "time_model_note": TIME_MODEL_NOTES[request.time_model],
        "decision_cost": config.decision, "request_order": config.request_order,
        "keep_alive_s": request.keep_alive_s, "time_scale": request.time_scale,
        "simulated_layers": routing.num_layers, "layer_multiplicity": routing.multiplicity,
        "expert_split": routing.split, "predictor_layers": routing.forecast_layers,
        "iterations_same_batches": len(schedule or []),
    }
    plan_info = {"reused": stage.reused, "replicas_per_layer": [layer.num_replicas for layer in plan.layers]}
    ablation = None
    if request.ablation:
        ablation = _ablation(request, source, slots, budget, say, (cluster, routing, schedule or [], config, predictor,
                                                                   plan), on_progress)
    timeline = build_timeline(live, float(sum(routing.multiplicity)), trace.arrival_s)
    return SystemRuns(setting, systems, same, plan=plan_info, pareto=pareto, ablation=ablation, timeline=timeline)


def _ablation(request: BenchRequest, source: PlanSource, slots: int, budget: int, say: Say, run: tuple,
              on_progress: OnProgress | None) -> list[dict[str, Any]]:
    """moeless with each part removed (bench/ablation.py); the plan without spares is cached like the main one."""
    from moeless_cli.bench.ablation import ablate

    main = request.plan_request(slots, budget)
    bare = dataclasses.replace(main, spares=False, out=main.out.with_name(f"{main.out.stem}-no-spares.json"))
    return ablate(*run, plan_stage(request.out, bare, source, say)[0], on_progress)


def _routings(profile: Any, preset: Any, predictor: Any, split: ReplaySplit) -> tuple[RecordedRouting, RecordedRouting]:
    """(what the learners see, what is replayed): one routing in-sample; held out, the training requests'
    (loads only) and the replay requests' (with forecasts), the replay knowing only the training loads."""
    from moeless_cli.sim.routing import build_routing

    shape = (preset.moe_layers, preset.num_experts, preset.top_k)
    if not split.held_out:
        routing = build_routing(profile, *shape, predictor)
        return routing, routing
    training = build_routing(profile, *shape, requests=np.asarray(split.train_requests))
    replay = build_routing(profile, *shape, predictor, requests=np.asarray(split.replay_requests))
    return training, replay.with_history(training.history)


def _model_path(model: str) -> Path:
    from moeless_cli.models.loading import resolve_model_path

    return resolve_model_path(model)


def _plan_source(routing: RecordedRouting, request: BenchRequest) -> PlanSource:
    """The simulated routing's loads and sample batches, as the plan job takes them."""
    from moeless_cli.jobs.plan import PlanSource

    return PlanSource(load=routing.history, name=f"{request.preset}-{request.hardware}",
                      origin={"bench": str(request.out), "preset": request.preset, "hardware": request.hardware},
                      spare_batches=routing.sample_batches(SPARE_BATCHES))


def _pareto(cluster: Any, routing: RecordedRouting, window: list, config: Any, predictor: Any,
            plan_for: Callable[[int], Plan], on_progress: OnProgress | None) -> dict[str, Any]:
    """The latency-memory sweep on `window` (the first iterations of static EP's batches)."""
    from moeless_cli.bench.pareto import PARETO_SYSTEMS, sweep

    rows = sweep(cluster, routing, window, config, predictor, plan_for, on_progress)
    return {"iterations": len(window), "systems": list(PARETO_SYSTEMS), "rows": rows}


def _plans_by_budget(request: BenchRequest, source: PlanSource, plan: Plan, slots: int, budget: int,
                     say: Say) -> Callable[[int], Plan]:
    """The plan moeless pins at a replica budget per layer: ilp with spares up to it, at most EPLB's
    default `budget` (then the main comparison's `plan`); each cached in the out dir like the main one
    (with a quarter of its ilp time: the ilp starts from the best greedy plan either way)."""

    def plan_for(replicas: int) -> Plan:
        if replicas >= budget:
            return plan
        main = request.plan_request(slots, replicas)
        swept = dataclasses.replace(main, time_limit=request.plan_seconds / 4,
                                    out=main.out.with_name(f"{main.out.stem}-r{replicas}.json"))
        return plan_stage(request.out, swept, source, say)[0]

    return plan_for


def _simulate(cluster: Any, routing: RecordedRouting, trace: Any, config: Any, predictor: Any, plan: Any,
              on_progress: OnProgress | None) -> tuple[dict[str, Any], dict[str, np.ndarray], list | None, dict]:
    """Each system closed-loop, then replayed on static EP's batches; returns (cores, same-batch seconds, schedule,
    system -> its closed-loop live replicas over time, where the simulator reports them)."""
    from moeless_cli.sim.simulator import replay, simulate

    systems: dict[str, Any] = {}
    same: dict[str, np.ndarray] = {}
    live: dict[str, dict[str, list]] = {}
    schedule = None
    for i, name in enumerate(SYSTEMS):
        if on_progress is not None:
            on_progress(name, i, len(SYSTEMS))
        result = simulate(name, cluster, routing, trace, config, predictor, plan)
        if name == "static":
            schedule = result["schedule"]
        if "timeline" in result:
            live[name] = result["timeline"]
        same[name] = replay(name, cluster, routing, schedule, config, predictor, plan)
        core = result["report"]
        systems[name] = {**core, "moe_layer_ms": latency_stats(same[name] * 1e3, (50, 99)),
                         "moe_layer_ms_own_batches": core["moe_layer_ms"]}
    bound = bound_system(cluster, routing, schedule, config)
    if bound is not None:  # the clairvoyant lossless floor on the same batches
        systems["bound"], same["bound"] = bound
    if on_progress is not None:
        on_progress("done", len(SYSTEMS), len(SYSTEMS))
    return systems, same, schedule, live


def bound_system(cluster: Any, routing: RecordedRouting, schedule: list | None,
                 config: Any) -> tuple[dict[str, Any], np.ndarray] | None:
    """The lossless floor (`sim/bound.py`) on static EP's batches, within the memory and the largest replica
    budget of the compared systems: (its JSON core, MoE-layer seconds [layer executions] in replay's order);
    None under the paper time model."""
    from moeless_cli.sim.bound import lossless_floor
    from moeless_cli.sim.simulator import make_setting

    setting = make_setting(cluster, routing, config, None)
    floor = lossless_floor(cluster, setting.slots_per_gpu, setting.max_replicas(serverless=True))
    if floor is None or not schedule:
        return None
    loads = np.stack([routing.batch(routing.truth, step.prefill, step.decode) for step in schedule])
    parts = floor.parts(loads.reshape(-1, routing.num_experts))  # [iterations * recorded layers] each
    repeat = np.tile(routing.multiplicity, len(schedule))  # each recorded layer stands for its preset layers
    seconds = np.repeat(parts.total_s, repeat)
    mean_ms = {name: float(np.repeat(part, repeat).mean() * 1e3) for name, part in
               (("experts", parts.compute_s), ("all_to_all", parts.exchange_s), ("fixed", parts.fixed_s))}
    core = {"policy": "bound", "lossy": False, "clairvoyant": True,
            "moe_layer_ms": latency_stats(seconds * 1e3, (50, 99)), "parts_mean_ms": mean_ms,
            "slots_per_gpu": floor.slots, "max_replicas_per_layer": floor.max_replicas}
    return core, seconds

