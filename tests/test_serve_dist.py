"""`serve --backend dist`: torchrun ranks (gloo, all-to-all) give the local tokens; each rank holds
only its share of the experts; two torchrun agents on 127.0.0.1 act as two nodes."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import cached_tiny_checkpoint

SMALL = ("--max-requests", "4", "--max-output-tokens", "4", "--max-prompt-tokens", "12", "--time-scale", "200")


def tiny_expert_bytes(model: Path) -> tuple[int, int, int]:
    """(experts per layer, MoE layers, bytes of one expert of one layer in float32) from config.json."""
    config = json.loads((model / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    return config["num_local_experts"], config["num_hidden_layers"], (2 * inter * hidden + hidden * inter) * 4


@functools.lru_cache(maxsize=None)
def local_outputs(model: Path) -> dict[str, list[int]]:
    """The local backend's tokens for the SMALL run (the reference every dist run must match)."""
    from moeless_cli.jobs.serve import ServeRequest, serve

    report = serve(ServeRequest(model=str(model), workers=2, max_requests=4, max_output_tokens=4, max_prompt_tokens=12,
                                time_scale=200.0)).report
    assert report["requests"]["failed"] == 0
    return report["outputs"]


def moeless_subprocess(*args: str, **kwargs) -> subprocess.Popen:
    """The real CLI in its own process (this checkout's sources first on the path)."""
    import moeless_cli

    src = str(Path(moeless_cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "moeless_cli", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dist_two_nodes_hold_only_their_experts_and_match_local(cli):
    """4 workers on two torchrun agents (2 processes each, c10d rendezvous); an expert-memory cap of
    2 replicas per layer means no fewer than 4 workers can hold the 8 experts."""
    model = cached_tiny_checkpoint("mixtral")
    experts, layers, expert_bytes = tiny_expert_bytes(model)
    cap_mb = f"{2.5 * layers * expert_bytes / 2**20:.6f}"  # room for 2 replicas per layer, not 3
    too_few = cli("serve", "--model", model, "--workers", "2", "--expert-memory-mb", cap_mb, *SMALL, "--json")
    assert too_few.exit_code != 0 and "do not fit in 2 worker(s)" in too_few.stderr
    port = free_port()
    nodes = [moeless_subprocess("serve", "--model", model, "--backend", "dist", "--workers", "4", "--nnodes", "2",
                                "--node-rank", str(i), "--rdzv-endpoint", f"127.0.0.1:{port}",
                                "--expert-memory-mb", cap_mb, *SMALL, "--json") for i in (0, 1)]
    finished = [node.communicate(timeout=600) for node in nodes]
    expected = local_outputs(model)
    for node, (out, err) in zip(nodes, finished):
        assert node.returncode == 0, err[-2000:]
        report = json.loads(out)
        assert report["backend"] == "dist" and report["workers"] == 4 and report["recoveries"] == 0
        assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
        assert report["outputs"] == expected
        ranks = report["dist"]["ranks"]
        assert len(ranks) == 4 and report["dist"]["expert_bytes_per_replica"] == expert_bytes
        share = experts // 4 * layers * expert_bytes  # the plan's share: 2 experts of every layer
        for rank in ranks:
            assert abs(rank["expert_bytes_start"] - share) <= 0.1 * share, rank
            assert rank["plan_share_bytes"] == share and rank["peak_replicas"] <= 2 * layers
        assert sum(r["expert_bytes_start"] for r in ranks) == experts * layers * expert_bytes


def test_dist_checks_plan_before_starting_processes(cli, tmp_path):
    from moeless_cli.plan_io import write_plan
    from moeless_cli.planning.solvers.static import static_plan

    plan = tmp_path / "plan.json"
    write_plan(plan, static_plan(3, 8, 4), {"config_hash": None})
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", "--plan", plan,
                 "--workers", "2", "--json")
    assert result.exit_code != 0 and "only 2 workers" in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--nnodes", "2"), "needs --rdzv-endpoint HOST:PORT"),
    (("--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:99999"), "needs --rdzv-endpoint HOST:PORT"),
    (("--nnodes", "2", "--workers", "3", "--rdzv-endpoint", "127.0.0.1:29500"), "cannot be split evenly"),
    (("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:29500"), "--node-rank (of --nnodes 2) must be at most 1"),
    (("--heartbeat-timeout", "0"), "--heartbeat-timeout must be at least 0.5"),
    (("--expert-memory-mb", "-1"), "--expert-memory-mb must be positive"),
])
def test_dist_refuses_bad_cluster_options_before_starting(cli, args, message):
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", *args, "--json")
    assert result.exit_code == 2 and message in result.stderr
    assert result.stdout == ""


def test_torchrun_command_joins_node_zeros_rendezvous(tmp_path):
    from moeless_cli.serving.launch import torchrun_command
    from moeless_cli.serving.rundir import RunDir
    from moeless_cli.serving.setup import ServeOptions

    o = ServeOptions(model="m", backend="dist", workers=4, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    cmd = torchrun_command(o, RunDir(tmp_path), attempt=0)
    assert "--nproc-per-node=2" in cmd and "--nnodes=2" in cmd and "--rdzv-backend=c10d" in cmd
    assert "--rdzv-endpoint=10.0.0.1:29400" in cmd and "--rdzv-conf=is_host=false" in cmd
    assert "--standalone" not in cmd
    single = torchrun_command(ServeOptions(model="m", backend="dist", workers=3), RunDir(tmp_path), attempt=1)
    assert "--standalone" in single and "--nproc-per-node=3" in single and single[-1] == "1"
