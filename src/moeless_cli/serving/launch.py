"""`serve --backend dist`: check what can be checked cheaply, start torchrun, supervise the ranks.

The launcher watches every rank of its node: a rank that dies, or whose heartbeat stops for
--heartbeat-timeout seconds (a stopped or hung process, which a gloo collective would wait on for
minutes), is a fault. The launcher then stops the group and starts torchrun again with one worker
fewer (serving/recovery.py): the requests already finished are carried over from the ranks'
journals, the rest run again, so no request is lost and the tokens stay those of greedy decoding.
When the survivors cannot hold the model, or on Ctrl-C, it reports every request as completed or
failed. A multi-node run (`--nnodes`) starts one torchrun agent per node (c10d rendezvous at
--rdzv-endpoint); each node's launcher returns its own report, and a lost rank ends the run there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json
from moeless_cli.serving.dist_main import layer_records_path
from moeless_cli.serving.recovery import Fault, accounted_report, cannot_recover, survivor_options, with_recoveries
from moeless_cli.serving.rundir import STARTUP_TIMEOUT_S, Beat, RunDir, read_heartbeat
from moeless_cli.serving.setup import ServeOptions, check_inputs

POLL_S = 0.1  # how often the launcher looks at torchrun and the heartbeats
STOP_WAIT_S = 15.0  # how long torchrun may take to exit once its ranks are killed


@dataclass
class Outcome:
    """How one start of the torchrun group ended: exactly one field is set (records with report)."""

    report: dict[str, Any] | None = None  # finished: local rank 0's report
    records: dict[str, Any] | None = None  # its layer records (record_layers)
    fault: Fault | None = None  # a rank died or stopped answering
    user_error: str | None = None  # a rank refused the input (MoelessError)
    stop_reason: str | None = None  # something else ended it (a rank's exception, torchrun's own failure)
    interrupted: bool = False  # Ctrl-C


def launch_dist(o: ServeOptions) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run the dist backend under torchrun: (the report, the layer records when o.record_layers)."""
    workers = check_inputs(o, launcher=True).workers
    with tempfile.TemporaryDirectory(prefix="moeless-dist-") as tmp:
        return _supervise(replace(o, workers=workers), RunDir(Path(tmp)))


def _supervise(o: ServeOptions, run: RunDir) -> tuple[dict[str, Any], dict[str, Any] | None]:
    faults: list[Fault] = []
    attempt = 0
    while True:
        out = _run_attempt(o, run, attempt)
        if out.report is not None:
            return with_recoveries(out.report, faults, run), out.records
        if out.user_error is not None and (attempt == 0 or not run.facts.is_file()):
            raise MoelessError(out.user_error)
        if out.fault is not None:
            faults.append(out.fault)
        reason = out.stop_reason or out.user_error or ("interrupted (Ctrl-C)" if out.interrupted else None)
        reason = reason or cannot_recover(o, run)
        if reason is not None:
            lost = f"rank {out.fault.rank} {out.fault.cause}; " if out.fault is not None else ""
            return with_recoveries(accounted_report(o, run, lost + reason, out.interrupted), faults, run), None
        attempt += 1
        o = survivor_options(o, out.fault, run, attempt)


def torchrun_command(o: ServeOptions, run: RunDir, attempt: int) -> list[str]:
    """torchrun for this node: --standalone on one node, else a c10d rendezvous hosted by node 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={o.workers // o.nnodes}"]
    if o.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={o.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={o.rdzv_endpoint}",
                f"--rdzv-id=moeless-serve-{attempt}", f"--rdzv-conf=is_host={str(o.node_rank == 0).lower()}"]
    return cmd + ["-m", "moeless_cli.serving.dist_main", "--options-json", json.dumps(o.to_json()),
                  "--run-dir", str(run.root), "--attempt", str(attempt)]


def _run_attempt(o: ServeOptions, run: RunDir, attempt: int) -> Outcome:
    """Start torchrun once and watch it until it ends, a rank stalls, or Ctrl-C."""
    log_path = run.root / f"torchrun.a{attempt}.log"
    scratch = run.root / "tmp"  # torchrun's and torch's temp files go with the run directory
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TMPDIR": str(scratch)}
    with open(log_path, "wb") as log:  # its own session: Ctrl-C reaches the launcher only
        proc = subprocess.Popen(torchrun_command(o, run, attempt), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        stalled = _watch(proc, run, attempt, o)
    except KeyboardInterrupt:
        _stop(proc, run, attempt)
        return Outcome(interrupted=True)
    except BaseException:
        _stop(proc, run, attempt)
        raise
    if stalled is not None:
        _stop(proc, run, attempt)
        return Outcome(fault=stalled)
    return _diagnose(proc.returncode, o, run, attempt, log_path.read_text(errors="replace"))


def _silent_ranks(run: RunDir, attempt: int) -> dict[int, Beat]:
    """local rank -> heartbeat of the ranks that are running, or that ended without a word (no
    clean exit, no error, no SIGTERM)."""
    found = {}
    for path in run.root.glob(f"hb.a{attempt}.r*"):
        local = int(path.name.rsplit(".r", 1)[1])
        ended = (run.user_error(attempt, local), run.crash(attempt, local), run.terminated(attempt, local))
        beat = read_heartbeat(path)
        if beat is not None and not any(p.exists() for p in ended):
            found[local] = beat
    return found


def _watch(proc: subprocess.Popen, run: RunDir, attempt: int, o: ServeOptions) -> Fault | None:
    """Wait for torchrun to exit; a rank silent for longer than the heartbeat timeout is a fault."""
    while proc.poll() is None:
        time.sleep(POLL_S)
        late = [b for b in _silent_ranks(run, attempt).values()
                if b.age_s > (o.heartbeat_timeout_s if b.serving else STARTUP_TIMEOUT_S)]
        if late and proc.poll() is None:
            beat = max(late, key=lambda b: b.age_s)
            return Fault(beat.rank, f"stopped answering (no heartbeat for {beat.age_s:.1f} s)", time.time(),
                         o.workers, beat.age_s)
    return None


def _is_child(pid: int, parent: int) -> bool:
    """Whether `pid` is still a process torchrun (`parent`) started (Linux: /proc; elsewhere assumed)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except (OSError, ValueError, IndexError):
        return False


def _stop(proc: subprocess.Popen, run: RunDir, attempt: int) -> None:
    """Kill this attempt's ranks (a stopped one cannot act on SIGTERM), then torchrun itself."""
    for path in run.root.glob(f"hb.a{attempt}.r*"):
        beat = read_heartbeat(path)
        if beat is not None and _is_child(beat.pid, proc.pid):
            try:
                os.kill(beat.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _diagnose(returncode: int, o: ServeOptions, run: RunDir, attempt: int, log: str) -> Outcome:
    """torchrun ended: a report, a user error, a rank that died without a word (a fault), or a stop."""
    if returncode == 0 and run.report.is_file():
        records = read_json(layer_records_path(run.report), "dist layer records") if o.record_layers else None
        return Outcome(report=read_json(run.report, "dist report"), records=records)
    user = sorted(run.root.glob(f"user-error.a{attempt}.r*"))
    if user:
        return Outcome(user_error=user[0].read_text())
    silent = sorted(beat.rank for beat in _silent_ranks(run, attempt).values())
    if silent:
        return Outcome(fault=Fault(silent[0], _exit_cause(log, silent[0]), time.time(), o.workers))
    crashes = sorted(run.root.glob(f"crash.a{attempt}.r*"))
    cause = crashes[0].read_text() if crashes else _torchrun_failure(log)
    return Outcome(stop_reason=cause)


def _exit_cause(log: str, rank: int) -> str:
    """How torchrun's failure summary says `rank` ended."""
    found = re.search(rf"^\s*rank\s*:\s*{rank}\b[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", log, re.M)
    if found is None:
        return "died"
    code = int(found.group(1))
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _torchrun_failure(log: str) -> str:
    """torchrun's failure summary names the first failed rank (its root cause) and its exit code."""
    log = log[log.find("Root Cause"):] if "Root Cause" in log else log
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", log, re.M)
    if rank is None:
        tail = " ".join(log.strip().splitlines()[-3:])[-300:]
        return f"a worker process failed ({tail or 'no output'})"
    return f"worker rank {rank.group(1)} {_exit_cause(log, int(rank.group(1)))}"
