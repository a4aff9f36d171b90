"""`moeless bench --mode real`: every system through serve's runtime on this machine's devices.

The routing model itself is executed (the preset's sizes do not apply); each system is one
`serve` run over the same trace, prompts, profile (load history) and predictor. Times are measured,
so they include the runtime's own overheads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from moeless_cli.bench.pipeline import SYSTEMS, BenchRequest


def run_real(request: BenchRequest, model: str, profile_dir: Path, predictor_path: Path,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    from moeless_cli.bench.compare import ratios
    from moeless_cli.serving.run import serve
    from moeless_cli.serving.setup import ServeOptions

    systems: dict[str, Any] = {}
    for i, name in enumerate(SYSTEMS):
        if on_progress is not None:
            on_progress(name, i, len(SYSTEMS))
        options = ServeOptions(
            model=model, predictor=predictor_path, profile=profile_dir, policy=name, workers=request.gpus,
            dataset=request.dataset, trace=request.trace, time_scale=request.time_scale,
            max_requests=request.max_requests, batching=request.batching, keep_alive_s=request.keep_alive_s,
            devices=tuple(request.devices),
        )
        systems[name] = serve(options)
    setting = {
        "model": model, "preset": None, "hardware": ",".join(request.devices), "gpus": request.gpus,
        "trace": request.trace, "requests": systems["static"]["requests"]["submitted"], "dataset": request.dataset,
        "batching": request.batching, "time_model": "measured", "keep_alive_s": request.keep_alive_s,
        "time_scale": request.time_scale,
    }
    return {"mode": "real", "setting": setting, "systems": systems, "ratios": ratios(systems), "moe_layer_s": {}}
