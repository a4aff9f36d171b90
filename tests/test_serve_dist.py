"""`serve --backend dist`: 2 CPU processes under torchrun (gloo, all-to-all) give the local tokens."""

from __future__ import annotations

import json

import pytest

from tiny_models import cached_tiny_checkpoint

SMALL = ("--max-requests", "4", "--max-output-tokens", "4", "--max-prompt-tokens", "12", "--time-scale", "200")


@pytest.mark.slow
def test_dist_two_processes_match_local(cli):
    model = cached_tiny_checkpoint("mixtral")
    local = cli("serve", "--model", model, "--workers", "2", *SMALL, "--json")
    assert local.exit_code == 0, local.output
    result = cli("serve", "--model", model, "--backend", "dist", "--workers", "2", *SMALL, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "dist" and report["workers"] == 2
    assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == json.loads(local.stdout)["outputs"]
    assert report["functions_measured"]["created"] >= 8  # each rank copied its own replicas
    assert report["functions_measured"]["warm_hits"] > 0  # summed over the ranks like the copies
    assert report["moe_layer_ms"]["mean"] > 0


@pytest.mark.slow
def test_dist_dead_worker_is_named(cli, monkeypatch):
    from moeless_cli.serving.dist_main import DIE_ENV

    monkeypatch.setenv(DIE_ENV, "1:5")  # rank 1 exits after 5 MoE layer calls
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", "--workers", "2",
                 *SMALL, "--json")
    assert result.exit_code != 0
    assert "worker rank 1 died" in result.stderr
    assert result.stdout == ""


def test_dist_checks_plan_before_starting_processes(cli, tmp_path):
    from moeless_cli.plan_io import write_plan
    from moeless_cli.planning.solvers.static import static_plan

    plan = tmp_path / "plan.json"
    write_plan(plan, static_plan(3, 8, 4), {"config_hash": None})
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", "--plan", plan,
                 "--workers", "2", "--json")
    assert result.exit_code != 0 and "only 2 workers" in result.stderr
