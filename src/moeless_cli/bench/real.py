"""`moeless bench --mode real`: every system through serve's runtime on this machine's devices.

The routing model itself is executed (the preset's sizes do not apply); each system is one
`serve` run over the same trace, prompts, profile (load history) and predictor. Times are measured,
so they include the runtime's own overheads.

With the local backend every run also records each MoE layer call (rows, replicas and seconds per
worker), and the simulator is checked against them (`sim/calibration.py`): each system's MoE-layer
times are predicted from its own dispatches by the time model fitted on the other systems' runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeless_cli.bench.compare import OnProgress, SystemRuns
from moeless_cli.bench.pipeline import SYSTEMS

if TYPE_CHECKING:
    from moeless_cli.bench.request import BenchRequest


def run_real(request: BenchRequest, model: str, profile_dir: Path, predictor_path: Path,
             on_progress: OnProgress | None = None) -> SystemRuns:
    """Every system through serve's runtime on request.devices, and the simulator checked against them."""
    from moeless_cli.models.loading import resolve_model_path
    from moeless_cli.jobs.serve import ServeRequest, serve

    systems: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for i, name in enumerate(SYSTEMS):
        if on_progress is not None:
            on_progress(name, i, len(SYSTEMS))
        options = ServeRequest(
            model=model, predictor=predictor_path, profile=profile_dir, policy=name, workers=request.gpus,
            dataset=request.dataset, trace=request.trace, time_scale=request.time_scale,
            max_requests=request.max_requests, batching=request.batching, keep_alive_s=request.keep_alive_s,
            devices=tuple(request.devices), record_layers=True,
        )
        result = serve(options)
        systems[name], records[name] = result.report, result.layer_records
    setting = {
        "model": model, "model_path": str(resolve_model_path(model)), "preset": None,
        "hardware": ",".join(request.devices), "gpus": request.gpus,
        "trace": request.trace, "requests": systems["static"]["requests"]["submitted"], "dataset": request.dataset,
        "batching": request.batching, "time_model": "measured", "keep_alive_s": request.keep_alive_s,
        "time_scale": request.time_scale,
    }
    from moeless_cli.sim.calibration import LayerRecords

    runs = {name: LayerRecords.from_dict(doc) for name, doc in records.items()}
    return SystemRuns(setting, systems, moe_layer_s={name: run.moe_s for name, run in runs.items()},
                      simulator_check=simulator_check(model, runs))


def simulator_check(model: str, runs: dict[str, Any]) -> dict[str, Any]:
    """The simulator's time model checked against the real runs, one held out at a time."""
    from moeless_cli.models.loading import read_model_config, resolve_model_path
    from moeless_cli.sim.calibration import calibrate
    from moeless_cli.sim.presets import preset_from_profile

    config = read_model_config(resolve_model_path(model))
    hidden = int(config.get("hidden_size") or 1)
    intermediate = int(next((config[k] for k in ("moe_intermediate_size", "intermediate_size", "ffn_dim")
                             if config.get(k)), 1))
    width = next(iter(runs.values())).worker_s.shape[1]
    preset = preset_from_profile(str(model), 1, 1, 1, hidden, intermediate)
    return calibrate(runs, preset) | {"workers": width}
