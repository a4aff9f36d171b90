"""`serve --backend dist` survives faults: a killed or stopped rank is replaced by re-planning onto the
survivors (no request lost, tokens unchanged); when the survivors cannot hold the model, or on
Ctrl-C, the report accounts for every request as completed or failed."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from test_serve_dist import SMALL, local_outputs, moeless_subprocess, tiny_expert_bytes
from tiny_models import cached_tiny_checkpoint

FAULT_ENV = "MOELESS_DIST_FAULT"


def dist_serve(cli, *args: str) -> dict:
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", "--workers", "2",
                 *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_accounted(report: dict, submitted: int) -> None:
    requests = report["requests"]
    assert requests["submitted"] == submitted == requests["completed"] + requests["failed"]


@pytest.mark.slow
def test_dist_recovers_from_a_killed_rank(cli, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:6")  # rank 1 exits (code 17) at its 7th MoE layer call
    report = dist_serve(cli, *SMALL)
    assert report["recoveries"] == 1 and len(report["recovery_s"]) == 1 and report["recovery_s"][0] > 0
    fault = report["faults"][0]
    assert fault["rank"] == 1 and fault["cause"] == "exited with code 17" and fault["recovered"]
    assert report["workers"] == 1 and report["dist"]["world"] == 1
    assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == local_outputs(cached_tiny_checkpoint("mixtral"))


@pytest.mark.slow
def test_dist_detects_a_stopped_rank_within_the_heartbeat_timeout(cli, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "0:6:stop")  # rank 0 SIGSTOPs itself: alive, silent, holding a collective
    started = time.monotonic()
    report = dist_serve(cli, *SMALL, "--heartbeat-timeout", "2")
    assert time.monotonic() - started < 300  # never the collective timeout's silent stall
    fault = report["faults"][0]
    assert fault["rank"] == 0 and fault["cause"].startswith("stopped answering") and fault["recovered"]
    assert 2 <= fault["heartbeat_silent_s"] < 2 + 1.5
    assert report["recoveries"] == 1
    assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == local_outputs(cached_tiny_checkpoint("mixtral"))


@pytest.mark.slow
def test_dist_accounts_for_every_request_when_the_survivors_cannot_hold_the_model(cli, monkeypatch):
    experts, layers, expert_bytes = tiny_expert_bytes(cached_tiny_checkpoint("mixtral"))
    cap_mb = f"{4.5 * layers * expert_bytes / 2**20:.6f}"  # 4 replicas per layer: 8 experts need both ranks
    # Request 0 arrives alone and finishes in 4 iterations (12 MoE calls); the rest arrive 2 s later.
    monkeypatch.setenv(FAULT_ENV, "1:12")
    report = dist_serve(cli, "--max-requests", "3", "--max-output-tokens", "4", "--max-prompt-tokens", "12",
                        "--time-scale", "2", "--expert-memory-mb", cap_mb)
    assert_accounted(report, 3)
    assert report["requests"]["completed"] >= 1 and report["requests"]["failed"] >= 1
    assert report["recoveries"] == 0 and not report["faults"][0]["recovered"]
    assert "cannot hold the model's 8 experts" in report["errors"][0]
    assert report["outputs"]["0"] == local_outputs(cached_tiny_checkpoint("mixtral"))["0"]


@pytest.mark.slow
def test_dist_ctrl_c_prints_the_partial_report(tmp_path):
    """SIGINT to `moeless serve --backend dist` (as Ctrl-C would): exit 130, every request accounted."""
    node = moeless_subprocess("serve", "--model", cached_tiny_checkpoint("mixtral"), "--backend", "dist", "--workers",
                              "2", "--max-requests", "12", "--max-output-tokens", "48", "--max-prompt-tokens", "12",
                              "--json", env={"TMPDIR": str(tmp_path)},  # 12 long requests at the trace's pace: some remain
                              # a shell without job control starts background jobs with SIGINT ignored, and
                              # Python then installs no KeyboardInterrupt handler: give the CLI a terminal's
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("moeless-dist-*/journal.*")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until a request has finished
    node.send_signal(signal.SIGINT)
    out, err = node.communicate(timeout=120)
    assert node.returncode == 130, (err[-1000:], out[-1000:])
    report = json.loads(out)
    assert report["interrupted"] is True
    assert_accounted(report, 12)
    assert report["requests"]["completed"] >= 1 and report["requests"]["failed"] >= 1
    assert not list(tmp_path.glob("moeless-dist-*"))  # the run directory went with the run


def test_drop_gpu_moves_lost_replicas_onto_the_survivors():
    from moeless_cli.planning.plan import LayerPlan, Plan
    from moeless_cli.planning.shrink import drop_gpu

    # 4 experts on 3 GPUs: expert 0 has replicas on GPUs 0 and 1, expert 3 lives on GPU 1 only.
    layer = LayerPlan.from_lists([0, 0, 1, 2, 3], [0, 1, 2, 0, 1], [0.25, 0.75, 1.0, 1.0, 1.0])
    shrunk = drop_gpu(Plan(num_gpus=3, num_experts=4, layers=[layer]), lost=1).layers[0]
    assert shrunk.replica_counts(4).tolist() == [1, 1, 1, 1]
    assert np.bincount(shrunk.expert, weights=shrunk.share, minlength=4).tolist() == [1.0] * 4
    assert set(shrunk.gpu.tolist()) <= {0, 1}  # GPU 2 became GPU 1
    assert shrunk.gpu[shrunk.expert == 1].tolist() == [1]
    assert shrunk.slots_used(2).tolist() == [2, 2]  # the orphaned expert 3 went to the emptier GPU


def test_launcher_blames_the_rank_that_died_without_a_word(tmp_path):
    from moeless_cli.serving.launch import _diagnose, _exit_cause
    from moeless_cli.serving.rundir import RunDir
    from moeless_cli.serving.setup import ServeOptions

    summary = ("Failures:\n[1]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 11)\n"
               "Root Cause (first observed failure):\n[0]:\n"
               "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 12)\n")
    assert _exit_cause(summary, 1) == "was killed by signal 9" and _exit_cause(summary, 0) == "exited with code 1"
    run = RunDir(tmp_path)
    for local in (0, 1):
        run.heartbeat(0, local).write_text(f"{100 + local} {local} serving\n")
    run.crash(0, 0).write_text("RuntimeError: Connection reset by peer")  # rank 0 only saw its peer go
    out = _diagnose(1, ServeOptions(model="m", backend="dist", workers=2), run, 0, summary)
    assert out.fault is not None and out.fault.rank == 1 and out.fault.cause == "was killed by signal 9"
    run.heartbeat(0, 1).unlink()  # no silent death: a rank's own exception ends the run with its cause
    out = _diagnose(1, ServeOptions(model="m", backend="dist", workers=2), run, 0, summary)
    assert out.fault is None and out.stop_reason == "RuntimeError: Connection reset by peer"
