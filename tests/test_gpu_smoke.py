"""benchmarks/gpu_smoke.py: one line and exit 2 without CUDA; its checks run on CPU (local backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_smoke.py"


def run_script(*args: str, hide_gpus: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent.parent / "src"), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_without_cuda_one_line_and_exit_2(tmp_path):
    out = tmp_path / "smoke.json"
    done = run_script("--out", str(out), hide_gpus=True)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA device" in lines[0] and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cpu_dry_run_checks_tokens_and_copies(tmp_path):
    out = tmp_path / "sub" / "smoke.json"
    done = run_script("--device", "cpu", "--models", "tiny-mixtral", "--dtypes", "bfloat16", "--backends", "local",
                      "--requests", "3", "--tokens", "3", "--copy-repeats", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "all identical: True" in done.stdout and f"wrote {out}" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["all_identical"] is True and doc["environment"]["device"] == "cpu"
    (case,) = doc["cases"]
    assert (case["model"], case["dtype"], case["plain_implementation"]) == ("tiny-mixtral", "bfloat16", "grouped_mm")
    assert case["local"]["identical"] is True and case["local"]["completed"] == 3 and case["local"]["failed"] == 0
    assert case["local"]["copies"] >= 8 and case["local"]["copy_bytes"] > 0 and "dist" not in case
    assert case["max_abs_logit_diff"] == 0.0  # bit-identical layer outputs, bf16
    assert case["copy"]["expert_bytes"] > 0 and case["copy"]["pageable_gbps"] > 0 and case["copy"]["pinned_us"] is None
    assert [p.name for p in out.parent.iterdir()] == ["smoke.json"]  # written atomically
