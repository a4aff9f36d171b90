"""Run every system on the same cluster, trace and recorded routing; collect serve's JSON cores.

Each system runs closed-loop (its own speed shapes its batches: TTFT, TPOT, throughput, cost).
MoE-layer latency is compared on the same batches for every system: static EP's iteration
sequence is replayed through each policy (`moe_layer_ms`); the closed-loop figure is kept as
`moe_layer_ms_own_batches`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from moeless_cli.bench.pipeline import SYSTEMS, BenchRequest, check_routing_model, plan_stage, predictor_stage, \
    profile_stage, request_dict
from moeless_cli.errors import MoelessError
from moeless_cli.online.report import latency_stats

Say = Callable[[str], None]
SPARE_BATCHES = 128  # sample batches the moeless plan's spare replicas are chosen on


def run_bench(request: BenchRequest, say: Say = lambda _: None,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """The whole pipeline; returns {"mode", "setting", "systems", "ratios", "stages", "moe_layer_s"}."""
    from moeless_cli.sim.hardware import get_hardware
    from moeless_cli.sim.presets import get_preset
    from moeless_cli.workloads.traces import load_trace

    request.validate()
    request.resolve_mode()
    preset, hardware = get_preset(request.preset), get_hardware(request.hardware)
    trace = load_trace(request.trace, time_scale=request.time_scale, max_requests=request.max_requests)
    model = request.routing_model()
    if request.mode == "sim":
        check_routing_model(model, preset)
    from moeless_cli.fileio import _check_parent_writable

    _check_parent_writable(request.out)
    try:
        request.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoelessError(f"cannot create --out {request.out}: {exc.strerror}") from None

    from moeless_cli.models.loading import resolve_model_path
    from moeless_cli.predictor import load_predictor
    from moeless_cli.profiling import load_profile
    from moeless_cli.sim.routing import build_routing
    from moeless_cli.sim.simulator import SimConfig, replay, replica_budget, simulate
    from moeless_cli.sim.timemodel import ClusterModel

    profile_dir, profile_reused = profile_stage(request, model, say)
    predictor_path, predictor_reused = predictor_stage(request, profile_dir, say)
    if request.mode == "real":
        from moeless_cli.bench.real import run_real

        return run_real(request, model, profile_dir, predictor_path, on_progress) | {
            "stages": {"profile": {"path": str(profile_dir), "reused": profile_reused},
                       "predictor": {"path": str(predictor_path), "reused": predictor_reused}},
            "request": request_dict(request)}
    profile = load_profile(profile_dir)
    predictor = load_predictor(predictor_path, expected_config_hash=profile.config_hash)
    routing = build_routing(profile, preset.moe_layers, preset.num_experts, preset.top_k, predictor)
    cluster = ClusterModel(hardware, preset, request.gpus, request.time_model)
    slots = cluster.slots_per_gpu()
    config = SimConfig(batching=request.batching, keep_alive_s=request.keep_alive_s, equal_budget=request.equal_budget)
    budget = replica_budget(routing.num_experts, request.gpus, slots, config.redundant)
    plan, plan_reused = plan_stage(request, routing.history, routing.sample_batches(SPARE_BATCHES), slots, budget, say)

    systems: dict[str, Any] = {}
    own: dict[str, np.ndarray] = {}
    same: dict[str, np.ndarray] = {}
    schedule = None
    for i, name in enumerate(SYSTEMS):
        if on_progress is not None:
            on_progress(name, i, len(SYSTEMS))
        result = simulate(name, cluster, routing, trace, config, predictor, plan)
        if name == "static":
            schedule = result["schedule"]
        own[name] = result["moe_layer_s"]
        same[name] = replay(name, cluster, routing, schedule, config, predictor, plan)
        core = result["report"]
        core["moe_layer_ms_own_batches"] = core["moe_layer_ms"]
        core["moe_layer_ms"] = latency_stats(same[name] * 1e3, (50, 99))
        systems[name] = core
    if on_progress is not None:
        on_progress("done", len(SYSTEMS), len(SYSTEMS))
    setting = {
        "model": model, "model_path": str(resolve_model_path(model)), "preset": preset.as_dict(),
        "hardware": hardware.name, "hardware_description": hardware.description,
        "gpus": request.gpus, "slots_per_gpu_per_layer": slots, "replica_budget_per_layer": budget,
        "serverless_replica_cap_per_layer": budget if request.equal_budget else slots * request.gpus,
        "trace": request.trace, "requests": len(trace),
        "dataset": request.dataset, "batching": request.batching, "time_model": request.time_model,
        "keep_alive_s": request.keep_alive_s, "time_scale": request.time_scale,
        "simulated_layers": routing.num_layers, "layer_multiplicity": routing.multiplicity,
        "expert_split": routing.split, "predictor_layers": routing.forecast_layers,
        "iterations_same_batches": len(schedule or []),
    }
    return {
        "mode": request.mode,
        "setting": setting,
        "systems": systems,
        "ratios": ratios(systems),
        "stages": {"profile": {"path": str(profile_dir), "reused": profile_reused},
                   "predictor": {"path": str(predictor_path), "reused": predictor_reused},
                   "plan": {"reused": plan_reused, "replicas_per_layer": [l.num_replicas for l in plan.layers]}},
        "request": request_dict(request),
        "moe_layer_s": same,
    }


def ratios(systems: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per system: mean MoE-layer latency and GB·s cost over static EP, EPLB and Oracle."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else float(a) / float(b)

    out: dict[str, dict[str, float | None]] = {}
    for name, core in systems.items():
        moe = core["moe_layer_ms"]["mean"]
        gbs = core["cost"]["gbs_proxy"]
        out[name] = {
            "moe_vs_static": ratio(moe, systems["static"]["moe_layer_ms"]["mean"]),
            "moe_vs_eplb": ratio(moe, systems["eplb"]["moe_layer_ms"]["mean"]),
            "moe_vs_oracle": ratio(moe, systems["oracle"]["moe_layer_ms"]["mean"]),
            "moe_vs_moeless_paper": ratio(moe, systems["moeless-paper"]["moe_layer_ms"]["mean"]),
            "gbs_vs_static": ratio(gbs, systems["static"]["cost"]["gbs_proxy"]),
            "gbs_vs_eplb": ratio(gbs, systems["eplb"]["cost"]["gbs_proxy"]),
        }
    return out
