"""One worker process of the dist backend (started by torchrun; `moeless serve --backend dist`
launches it). Rank 0 writes the report (and, with record_layers, the layer records beside it:
`<report>.layer_records`); a rank that hits a MoelessError writes it beside the report path
(`<report>.rank<r>.error`) so the launcher can show it.

    torchrun --standalone --nproc-per-node 2 -m moeless_cli.serving.dist_main \\
        --options-json '{"model": "tiny-mixtral", "max_requests": 4}' --report report.json
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import write_bytes_atomic, write_json_atomic
from moeless_cli.online.report import ServeMeasurements, serve_report
from moeless_cli.serving.setup import ServeOptions

DIE_ENV = "MOELESS_DIST_FAULT"  # fault injection for tests: "<rank>:<layer calls>" makes that rank exit


def layer_records_path(report: Path) -> Path:
    """Where rank 0 writes the layer records (record_layers) beside the report."""
    return Path(f"{report}.layer_records")


def _inject_fault(runtime, rank: int) -> None:
    spec = os.environ.get(DIE_ENV)
    if not spec or int(spec.split(":")[0]) != rank:
        return
    limit, calls, forward = int(spec.split(":")[1]), [0], runtime.moe_forward

    def dying(*args):
        calls[0] += 1
        if calls[0] > limit:
            os._exit(17)
        return forward(*args)

    runtime.moe_forward = dying


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


def _serve_rank(o: ServeOptions, rank: int, world: int, device: str) -> ServeMeasurements:
    """This rank's share of the run; returns what it measured, with the copies summed over ranks."""
    import torch
    import torch.distributed as dist

    from moeless_cli.serving.dist import DistRuntime
    from moeless_cli.serving.run import prepare, serve_loop, warm_up
    from moeless_cli.serving.setup import build_workload
    from moeless_cli.serving.workers import Worker

    prepared = prepare(o)
    workload = build_workload(o, prepared.loaded.tokenizer)
    workers = [Worker(i, device if i == rank else "cpu") for i in range(world)]
    runtime = DistRuntime(prepared.loaded, workers, prepared.policy, prepared.predictor, o.distance, rank, world)
    runtime.install()
    warm_up(prepared.loaded, runtime)
    _inject_fault(runtime, rank)
    clock = torch.zeros(1, dtype=torch.float64, device=device)

    def sync_now(now: float) -> float:
        clock.fill_(now)
        dist.broadcast(clock, 0)
        runtime.iteration_now = float(clock.item())
        return runtime.iteration_now

    measured = serve_loop(o, prepared, runtime, workload, sync_now=sync_now, fatal=True)
    return replace(measured, functions_measured=_summed_counters(runtime, device))


def run_rank(o: ServeOptions, report: Path) -> None:
    import torch
    import torch.distributed as dist

    from moeless_cli.serving.run import layer_records

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = any(d.startswith("cuda") for d in o.devices)
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=120))
    try:
        o = replace(o, workers=world, devices=(device,), backend="dist")
        measured = _serve_rank(o, rank, world, device)
        if rank == 0:
            if o.record_layers:
                write_json_atomic(layer_records_path(report), layer_records(measured.layers))
            write_json_atomic(report, serve_report(measured))
    except MoelessError as exc:
        write_bytes_atomic(Path(f"{report}.rank{rank}.error"), str(exc).encode())
        raise SystemExit(3) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    import json

    parser = argparse.ArgumentParser(description="one moeless dist-backend worker (run under torchrun)")
    parser.add_argument("--options-json", required=True, help="ServeOptions as a JSON object")
    parser.add_argument("--report", required=True, type=Path, help="where rank 0 writes the JSON report")
    args = parser.parse_args(argv)
    code = 0
    try:
        run_rank(ServeOptions.from_json(json.loads(args.options_json)), args.report)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    # Skip interpreter teardown: after the process group is gone, a native thread that torch or
    # gloo still holds can be destroyed while joinable at exit ("terminate called without an
    # active exception", SIGABRT), which torchrun reports as a dead worker although the run
    # finished and its report is written. Everything worth keeping is flushed above this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
