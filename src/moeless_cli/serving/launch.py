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
from moeless_cli.serving.dist_main import layer_records_path
from moeless_cli.serving.setup import ServeOptions, check_inputs


def _dead_rank(stderr: str) -> str:
    """torchrun's failure summary names the first failed rank and its exit code."""
    rank = re.search(r"rank\s*:\s*(\d+)", stderr)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", stderr)
    if rank is None:
        tail = " ".join(stderr.strip().splitlines()[-3:])[-300:]
        return f"a worker process failed ({tail or 'no output'})"
    return f"worker rank {rank.group(1)} died (exit code {code.group(1) if code else '?'})"


def launch_dist(o: ServeOptions) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run the dist backend under torchrun: (the report, the layer records when o.record_layers)."""
    workers = check_inputs(o, launcher=True).workers
    with tempfile.TemporaryDirectory(prefix="moeless-dist-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
               "-m", "moeless_cli.serving.dist_main", "--options-json", json.dumps(o.to_json()),
               "--report", str(report)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        errors = sorted(Path(tmp).glob("report.json.rank*.error"))
        if errors:
            raise MoelessError(errors[0].read_text())
        if proc.returncode != 0 or not report.is_file():
            raise MoelessError(f"dist backend stopped: {_dead_rank(proc.stderr)}; no report was written")
        records = read_json(layer_records_path(report), "dist layer records") if o.record_layers else None
        return read_json(report, "dist report"), records
