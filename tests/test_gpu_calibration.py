"""benchmarks/gpu_calibration.py runs on CPU (--quick) and its JSON loads into a Hardware."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moeless_cli.errors import MoelessError
from moeless_cli.sim.hardware import get_hardware, hardware_from_calibration

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_calibration.py"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cal") / "sub" / "cal.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fitted:" in done.stdout and f"wrote {out}" in done.stdout
    assert [p.name for p in out.parent.iterdir()] == ["cal.json"]  # no temp file left behind
    return json.loads(out.read_text())


def test_quick_cpu_run_writes_every_figure(calibration):
    assert {"device", "device_name", "memory_gb", "torch", "cuda", "dtype", "gemm", "h2d", "dispatch",
            "fitted"} <= set(calibration)
    assert calibration["device"] == "cpu" and calibration["torch"] == torch.__version__
    rows = calibration["gemm"]["tiny"]["rows"]
    assert [r["tokens"] for r in rows] == [1, 2, 4, 8, 16]
    assert all(r["seconds"] > 0 and r["tflops"] > 0 and r["weight_gbps"] > 0 for r in rows)
    assert calibration["h2d"]["tiny"]["pinned_gbps"] is None and calibration["h2d"]["tiny"]["pageable_gbps"] > 0
    assert [(d["experts"], d["gpus"], d["tokens"]) for d in calibration["dispatch"]] == [
        (8, 8, 32), (64, 8, 2048), (256, 64, 8192)]
    fitted = calibration["fitted"]
    assert {"tflops", "hbm_gbps", "gemm_efficiency", "h2d_pinned_gbps", "h2d_pageable_gbps", "h2d_gbps"} <= set(fitted)
    assert fitted["gemm_efficiency"]["tiny"]["16"] == pytest.approx(1.0)  # relative to the largest batch


def test_loader_takes_measured_figures_and_the_rest_from_the_base(calibration):
    hw = hardware_from_calibration(calibration, base="h200")
    base = get_hardware("h200")
    assert hw.name == "h200-calibrated"
    assert hw.tflops == calibration["fitted"]["tflops"] and hw.hbm_gbps == calibration["fitted"]["hbm_gbps"]
    assert hw.host_gbps == calibration["fitted"]["h2d_pageable_gbps"]  # no pinned memory on CPU
    assert hw.memory_gb == base.memory_gb and hw.fast_link_gbps == base.fast_link_gbps
    assert get_hardware("h200") == base  # the presets are untouched


def test_loader_errors_name_the_problem(calibration):
    gpu_doc = {**calibration, "device_name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.0}
    assert hardware_from_calibration(gpu_doc).name == "h100-calibrated"
    assert hardware_from_calibration(gpu_doc).memory_gb == 85.0
    with pytest.raises(MoelessError, match="no hardware preset matches device"):
        hardware_from_calibration({**calibration, "device_name": "cpu"})
    with pytest.raises(MoelessError, match="no 'fitted' object"):
        hardware_from_calibration({"device_name": "NVIDIA H200"})
    broken = {**calibration, "fitted": {**calibration["fitted"], "hbm_gbps": 0}}
    with pytest.raises(MoelessError, match="fitted.hbm_gbps must be a positive number"):
        hardware_from_calibration(broken, base="h200")


def test_dispatch_decision_is_moelesss_device_split():
    spec = importlib.util.spec_from_file_location("gpu_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # expert 0: 400 pairs over replicas on GPUs 0 and 1; experts 1 and 2: one replica each, few pairs
    ids = torch.cat([torch.zeros(400, dtype=torch.int64), torch.tensor([1, 2, 1])])[torch.randperm(403)]
    table_gpu = torch.tensor([[0, 1], [2, -1], [3, -1]])
    gpu = module.dispatch_decision(ids, table_gpu, 4)
    # 400 pairs are two weight reads' worth (143 token-times each): two pieces in whole 64-token tiles,
    # 192 | 208, in the pairs' order; a small expert stays whole on its replica
    assert gpu[ids == 0].tolist() == [0] * 192 + [1] * 208
    assert gpu[ids == 1].tolist() == [2, 2] and gpu[ids == 2].tolist() == [3]
