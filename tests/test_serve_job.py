"""The serve job and its shared checks: one worker default for both backends, the options' JSON
codec, the layer records returned beside the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import cached_tiny_checkpoint

SMALL = dict(max_requests=3, max_output_tokens=3, max_prompt_tokens=12, time_scale=200.0)


@pytest.mark.parametrize("backend,launcher", [("local", False), ("dist", True)])
def test_both_backends_default_to_the_same_workers(tmp_path, backend, launcher):
    from moeless_cli.models.loading import config_hash, read_model_config
    from moeless_cli.plan_io import write_plan
    from moeless_cli.planning.solvers.static import static_plan
    from moeless_cli.serving.setup import DEFAULT_WORKERS, ServeOptions, check_inputs

    model = cached_tiny_checkpoint("mixtral")
    checked = check_inputs(ServeOptions(model=str(model), backend=backend), launcher=launcher)
    assert DEFAULT_WORKERS == 4 and checked.workers == DEFAULT_WORKERS and checked.plan is None
    assert checked.config_hash == config_hash(read_model_config(model))
    plan = tmp_path / "plan.json"
    write_plan(plan, static_plan(3, 8, 3), {"config_hash": checked.config_hash})
    checked = check_inputs(ServeOptions(model=str(model), backend=backend, plan=plan), launcher=launcher)
    assert checked.workers == 3 and checked.plan.num_gpus == 3  # the plan's GPUs
    assert check_inputs(ServeOptions(model=str(model), backend=backend, plan=plan, workers=5)).workers == 5


def test_dist_launcher_wants_one_gpu_per_worker(monkeypatch):
    import torch

    from moeless_cli.errors import MoelessError
    from moeless_cli.serving.setup import ServeOptions, check_inputs

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    options = ServeOptions(model=str(cached_tiny_checkpoint("mixtral")), backend="dist", devices=("cuda:0",),
                           workers=2)
    with pytest.raises(MoelessError, match="one GPU per worker: 2 workers, 1 GPUs visible"):
        check_inputs(options, launcher=True)
    assert check_inputs(options).workers == 2  # a rank sees its own node only: it does not count


def test_options_json_round_trip():
    from moeless_cli.serving.setup import ServeOptions

    options = ServeOptions(model="m", plan=Path("p.json"), predictor=None, profile=Path("prof"),
                           devices=("cuda:0", "cuda:1"), workers=2, record_layers=True)
    doc = options.to_json()
    assert doc["plan"] == "p.json" and doc["profile"] == "prof" and doc["predictor"] is None
    assert ServeOptions.from_json({**doc, "devices": list(doc["devices"]), "unknown": 1}) == options


def test_serve_job_returns_layer_records_beside_the_report():
    from moeless_cli.jobs.serve import ServeRequest, ServeResult, serve

    model = str(cached_tiny_checkpoint("mixtral"))
    result = serve(ServeRequest(model=model, workers=2, record_layers=True, **SMALL))
    assert isinstance(result, ServeResult) and "layer_records" not in result.report
    assert result.report["requests"] == {"submitted": 3, "completed": 3, "failed": 0}
    records = result.layer_records
    assert set(records) == {"worker_s", "worker_rows", "worker_replicas", "exchange_s", "decide_s", "cold_s"}
    assert len(records["worker_s"]) > 0 and all(len(row) == 2 for row in records["worker_rows"])
    assert serve(ServeRequest(model=model, workers=2, **SMALL)).layer_records is None
