"""`serve --backend dist`: check what can be checked cheaply, start torchrun, collect the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json
from moeless_cli.serving.setup import ServeOptions, check_options, check_plan_cheaply, check_predictor


def _cheap_checks(o: ServeOptions) -> int:
    """Options, plan and predictor against the model (config only, no weights); returns workers."""
    from moeless_cli.models.loading import config_hash, read_model_config, resolve_model_path

    check_options(o)
    chash = config_hash(read_model_config(resolve_model_path(o.model)))
    if o.predictor is not None:
        check_predictor(o.predictor, chash)
    workers = o.workers
    if o.plan is not None:
        workers = workers or check_plan_cheaply(o.plan, chash, workers).num_gpus
    workers = workers or 2
    if any(d.startswith("cuda") for d in o.devices):
        import torch

        if torch.cuda.device_count() < workers:
            raise MoelessError(f"--backend dist with CUDA needs one GPU per worker: {workers} workers, "
                               f"{torch.cuda.device_count()} GPUs visible")
    return workers


def _dead_rank(stderr: str) -> str:
    """torchrun's failure summary names the first failed rank and its exit code."""
    rank = re.search(r"rank\s*:\s*(\d+)", stderr)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", stderr)
    if rank is None:
        tail = " ".join(stderr.strip().splitlines()[-3:])[-300:]
        return f"a worker process failed ({tail or 'no output'})"
    return f"worker rank {rank.group(1)} died (exit code {code.group(1) if code else '?'})"


def launch_dist(o: ServeOptions) -> dict[str, Any]:
    from moeless_cli.serving.dist_main import options_to_json

    workers = _cheap_checks(o)
    with tempfile.TemporaryDirectory(prefix="moeless-dist-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
               "-m", "moeless_cli.serving.dist_main", "--options-json", json.dumps(options_to_json(o)),
               "--report", str(report)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        errors = sorted(Path(tmp).glob("report.json.rank*.error"))
        if errors:
            raise MoelessError(errors[0].read_text())
        if proc.returncode != 0 or not report.is_file():
            raise MoelessError(f"dist backend stopped: {_dead_rank(proc.stderr)}; no report was written")
        return read_json(report, "dist report")
