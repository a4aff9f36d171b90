"""The serve job: a ServeRequest (serving.setup.ServeOptions) in, a ServeResult out.

Picks the backend: `local` serves in this process (serving/run.py); `dist` checks the inputs,
then starts one process per worker under torchrun and supervises them, replacing a lost rank
(serving/launch.py, serving/dist_main.py, serving/recovery.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from moeless_cli.serving.setup import ServeOptions

ServeRequest = ServeOptions  # the job's request: what to serve, how, on which workers
ProgressFn = Callable[[int, int], None]  # (requests done, submitted)


@dataclass
class ServeResult:
    report: dict[str, Any]  # the --json report (partial, with "interrupted": true, after Ctrl-C)
    layer_records: dict[str, Any] | None  # every MoE layer call's per-worker rows, replicas and seconds
    # (options.record_layers; sim/calibration.py's LayerRecords), else None


def serve(options: ServeRequest, progress: ProgressFn | None = None) -> ServeResult:
    """Serve the request trace with expert parallelism and serverless expert replicas.

    progress: called with (requests done, submitted) as requests finish (local backend only).
    """
    if options.backend == "dist":
        from moeless_cli.serving.launch import launch_dist

        report, records = launch_dist(options)
    else:
        from moeless_cli.serving.run import serve_local

        report, records = serve_local(options, progress)
    return ServeResult(report=report, layer_records=records)
