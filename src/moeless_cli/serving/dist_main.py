"""One worker process of the dist backend (started by torchrun; `moeless serve --backend dist`
launches and supervises it, serving/launch.py). Local rank 0 of each node writes the node's report
(and, with record_layers, the layer records beside it); every rank beats a heartbeat, journals the
requests it finished and says how it ended, in the node's run directory (serving/rundir.py).

    torchrun --standalone --nproc-per-node 2 -m moeless_cli.serving.dist_main \\
        --options-json '{"model": "tiny-mixtral", "max_requests": 4}' --run-dir /tmp/run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import write_json_atomic
from moeless_cli.online.report import serve_report
from moeless_cli.serving.rundir import Heartbeat, RunDir, append_done, read_done
from moeless_cli.serving.setup import ServeOptions

FAULT_ENV = "MOELESS_DIST_FAULT"  # fault injection for tests: "<rank>:<layer calls>[:exit|stop]": in the
# first start only, that rank exits (code 17) or stops itself (SIGSTOP) after that many MoE layer calls
DIE_ENV = FAULT_ENV  # the older name
FAULT_EXIT_CODE = 17
COLLECTIVE_TIMEOUT_S = 120.0  # a collective waiting this long fails (the launcher's heartbeat acts sooner)


def layer_records_path(report: Path) -> Path:
    """Where local rank 0 writes the layer records (record_layers) beside the report."""
    return Path(f"{report}.layer_records")


@dataclass(frozen=True)
class RankEnv:
    """This process's place, from torchrun's environment, and its run."""

    rank: int  # global rank (the worker index)
    world: int  # processes over all nodes
    local_rank: int  # index on this node (its GPU on CUDA)
    device: str  # cpu or cuda:<local_rank>
    run: RunDir  # the node's run directory
    attempt: int  # 0 at the first start, k after k recoveries
    beat: Heartbeat  # this rank's heartbeat (says when loading is over)


def _inject_fault(runtime: Any, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV, "").split(":")
    if len(spec) < 2 or int(spec[0]) != rank:
        return
    limit, kind, calls, forward = int(spec[1]), (spec[2] if len(spec) > 2 else "exit"), [0], runtime.moe_forward

    def faulty(*args):
        calls[0] += 1
        if calls[0] == limit + 1:
            if kind == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)  # frozen here until the launcher kills it
            else:
                os._exit(FAULT_EXIT_CODE)
        return forward(*args)

    runtime.moe_forward = faulty


def _summed_counters(runtime: Any, device: str) -> dict[str, float]:
    """The runtime's weight-copy counters summed over the ranks (a collective: every rank calls it)."""
    import torch
    import torch.distributed as dist

    from moeless_cli.serving.lifecycle import MeasuredFunctionCounters

    c = runtime.ledger.counters
    totals = torch.tensor([c.created, c.retired, c.bytes_moved, c.cold_start_s, c.memory_byte_s, c.warm_hits],
                          dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return asdict(MeasuredFunctionCounters(
        created=int(totals[0]), cold_starts=int(totals[0]), retired=int(totals[1]), bytes_moved=int(totals[2]),
        cold_start_s=float(totals[3]), memory_byte_s=float(totals[4]), warm_hits=int(totals[5])))


def _memory_row(runtime: Any, at_start: int) -> list[float]:
    """This rank's expert memory: bytes at the start, at the end, its planned share, peak replicas."""
    import resource

    placed = sum(1 for table in runtime.policy.pool.layers.values() for _, gpu in table if gpu == runtime.rank)
    return [float(at_start), float(runtime.resident_expert_bytes()), float(runtime.planned_replicas),
            float(runtime.ledger.peak_live), float(placed), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]


def _gather_memory(runtime: Any, at_start: int, device: str) -> dict[str, Any]:
    """Every rank's expert memory (a collective), for the report's `dist` section."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor(_memory_row(runtime, at_start), dtype=torch.float64, device=device)
    rows = [torch.zeros_like(mine) for _ in range(runtime.world)]
    dist.all_gather(rows, mine)
    per_replica = runtime.store.expert_bytes
    return {"world": runtime.world, "expert_bytes_per_replica": per_replica, "ranks": [
        {"rank": r, "expert_bytes_start": int(row[0]), "expert_bytes_end": int(row[1]),
         "plan_share_bytes": int(row[2] * per_replica), "plan_replicas": int(row[2]), "peak_replicas": int(row[3]),
         "replicas_end": int(row[4]), "max_rss_mb": float(row[5])}
        for r, row in enumerate(t.tolist() for t in rows)]}


def _clock_sync(runtime: Any, device: str):
    """sync_now for the serve loop: every rank takes rank 0's clock (a broadcast each step)."""
    import torch
    import torch.distributed as dist

    clock = torch.zeros(1, dtype=torch.float64, device=device)

    def sync_now(now: float) -> float:
        clock.fill_(now)
        dist.broadcast(clock, 0)
        runtime.iteration_now = float(clock.item())
        return runtime.iteration_now

    return sync_now


def _write_facts(env: RankEnv, prepared: Any, workload: Any, replica_bytes: int) -> float:
    """Local rank 0 at the first start: what the launcher needs to account for the requests and to
    check whether fewer workers can hold the experts. Returns the trace clock's zero (wall time)."""
    from moeless_cli.fileio import read_json

    if env.run.facts.is_file():
        return float(read_json(env.run.facts, "dist run facts")["clock_zero_wall"])
    zero = time.time()
    if env.local_rank == 0:
        loaded = prepared.loaded
        write_json_atomic(env.run.facts, {
            "model": loaded.model_id, "num_moe_layers": loaded.num_moe_layers, "num_experts": loaded.num_experts,
            "replica_bytes": replica_bytes, "clock_zero_wall": zero, "policy": prepared.policy.name,
            "lossy": prepared.policy.lossy, "requests": [[r.id, r.arrival_s, r.prompt_tokens, r.output_tokens]
                                                         for r in workload.requests]})
    return zero


def _loop_control(env: RankEnv, runtime: Any, prepared: Any, workload: Any) -> Any:
    """Resume after a recovery: the requests earlier attempts finished are carried, the trace's clock
    goes on from where it was, and every request this attempt finishes is journalled."""
    from moeless_cli.online.batching import RequestTiming
    from moeless_cli.serving.run import LoopControl

    zero = _write_facts(env, prepared, workload, prepared.replica_bytes)
    by_id = {r.id: r for r in workload.requests}
    done = {rid: line for rid, line in read_done(env.run.root).items() if rid in by_id}
    carried = {rid: RequestTiming(by_id[rid], prefilled=line["prefilled"], generated=line["generated"],
                                  first_token_s=line["first_token_s"], finish_s=line["finish_s"])
               for rid, line in done.items()}
    journal = env.run.journal(env.attempt, env.local_rank)
    env.beat.serving()
    if env.local_rank == 0:
        env.run.ready(env.attempt).write_text(f"{time.time()!r}\n")
    return LoopControl(sync_now=_clock_sync(runtime, env.device), fatal=True, carried=carried,
                       carried_outputs={rid: line["outputs"] for rid, line in done.items()},
                       clock_offset_s=max(0.0, time.time() - zero),
                       on_done=lambda timing, outputs: append_done(journal, timing, outputs))


def _serve_rank(o: ServeOptions, env: RankEnv) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """This rank's share of the run: (the report, with the copies summed and every rank's expert
    memory; the layer records when o.record_layers)."""
    from moeless_cli.serving.dist import DistRuntime, RankPlace
    from moeless_cli.serving.run import layer_records, prepare, serve_loop, warm_up
    from moeless_cli.serving.setup import build_workload
    from moeless_cli.serving.workers import Worker

    prepared = prepare(o, load_device="cpu")  # the fused experts are freed before the dense weights move
    workload = build_workload(o, prepared.loaded.tokenizer, prepared.trace)
    workers = [Worker(i, env.device if i == env.rank else "cpu") for i in range(env.world)]
    place = RankPlace(env.rank, env.world, env.run.store, writes_store=env.local_rank == 0)
    runtime = DistRuntime(prepared.loaded, workers, prepared.policy, prepared.predictor, o.distance, place)
    runtime.install()
    prepared.loaded.model.to(env.device)
    warm_up(prepared.loaded, runtime)
    at_start = runtime.resident_expert_bytes()
    if env.attempt == 0:
        _inject_fault(runtime, env.rank)
    measured = serve_loop(o, prepared, runtime, workload, _loop_control(env, runtime, prepared, workload))
    measured = replace(measured, functions_measured=_summed_counters(runtime, env.device))
    report = serve_report(measured) | {"dist": _gather_memory(runtime, at_start, env.device)}
    return report, (layer_records(measured.layers) if o.record_layers else None)


def run_rank(o: ServeOptions, run: RunDir, attempt: int, beat: Heartbeat) -> None:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = any(d.startswith("cuda") for d in o.devices)
    env = RankEnv(rank, world, local_rank, f"cuda:{local_rank}" if cuda else "cpu", run, attempt, beat)
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        report, records = _serve_rank(replace(o, workers=world, devices=(env.device,), backend="dist"), env)
        if local_rank == 0:
            if records is not None:
                write_json_atomic(layer_records_path(run.report), records)
            write_json_atomic(run.report, report)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_on_sigterm(marker: Path) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: say so, so the launcher blames
    the rank that died first and not these."""

    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            marker.write_text("SIGTERM\n")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> None:
    import json

    parser = argparse.ArgumentParser(description="one moeless dist-backend worker (run under torchrun)")
    parser.add_argument("--options-json", required=True, help="ServeOptions as a JSON object")
    parser.add_argument("--run-dir", required=True, type=Path, help="the node's run directory (reports, heartbeats)")
    parser.add_argument("--attempt", type=int, default=0, help="0 at the first start, k after k recoveries")
    args = parser.parse_args(argv)
    run, local_rank = RunDir(args.run_dir), int(os.environ.get("LOCAL_RANK", 0))
    _exit_on_sigterm(run.terminated(args.attempt, local_rank))
    beat = Heartbeat(run.heartbeat(args.attempt, local_rank), int(os.environ.get("RANK", 0)))
    code = 0
    try:
        run_rank(ServeOptions.from_json(json.loads(args.options_json)), run, args.attempt, beat)
        beat.finish()
    except MoelessError as exc:
        run.user_error(args.attempt, local_rank).write_text(str(exc))
        code = 3
    except BaseException as exc:  # the cause must reach the user: the launcher reads it
        run.crash(args.attempt, local_rank).write_text(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        code = 1
    # Skip interpreter teardown: after the process group is gone, a native thread that torch or
    # gloo still holds can be destroyed while joinable at exit ("terminate called without an
    # active exception", SIGABRT), which torchrun reports as a dead worker although the run
    # finished and its report is written. Everything worth keeping is flushed above this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
