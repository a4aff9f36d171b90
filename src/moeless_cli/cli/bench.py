"""`moeless bench`: profile -> train-predictor -> plan -> every system side by side (simulated)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, err_console, guarded, make_progress

if TYPE_CHECKING:
    from moeless_cli.jobs.bench import BenchResult

HELP = ("Every system side by side: static EP, EPLB, EPLB+balanced, Oracle, moeless-paper and moeless on a simulated "
        "cluster, and a latency-memory sweep.")


@guarded
def bench(
    model: Optional[str] = typer.Option(None, "--model", help="Routing model (built-in or checkpoint); default: the preset's."),
    preset: str = typer.Option("mixtral-8x7b", "--preset", help="Model sizes to simulate."),
    hardware: str = typer.Option("a6000", "--hardware", help="GPU model: a6000, h100, h200."),
    gpus: int = typer.Option(8, "--gpus", help="GPUs in the simulated cluster."),
    trace: str = typer.Option("azure-conv", "--trace", help="Arrival trace (built-in name or CSV/JSONL)."),
    dataset: str = typer.Option("mix", "--dataset", help="Prompts whose routing is recorded."),
    batching: str = typer.Option("continuous", "--batching", help="continuous, or paper (one-second batches)."),
    mode: str = typer.Option(
        "auto", "--mode",
        help="sim (simulated cluster), real (serve's runtime), or auto: real when this machine has --gpus CUDA devices.",
    ),
    time_model: str = typer.Option("default", "--time-model", help="default, roofline, or paper (comparison only)."),
    max_requests: int = typer.Option(200, "--max-requests", help="First requests of the trace."),
    time_scale: float = typer.Option(1.0, "--time-scale", help=">1 compresses arrivals."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Serverless keep-alive, seconds."),
    equal_budget: bool = typer.Option(
        False, "--equal-budget",
        help="Hold moeless-paper and moeless to EPLB's replicas per layer (default: they scale within GPU memory).",
    ),
    num_prompts: int = typer.Option(64, "--num-prompts", help="Prompts profiled for routing."),
    epochs: int = typer.Option(30, "--epochs", help="Predictor training epochs."),
    devices: str = typer.Option("cpu", "--devices", help="Real mode: comma-separated devices (cpu, cuda:0, ...)."),
    pareto: bool = typer.Option(
        True, "--pareto/--no-pareto",
        help="Sim mode: sweep replica memory per layer for eplb, eplb+balanced, moeless-paper, moeless (pareto.png).",
    ),
    pareto_iterations: int = typer.Option(
        400, "--pareto-iterations", help="The sweep replays this many first iterations of the same batches."
    ),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Output directory (cached stages are reused)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Run the whole pipeline on built-in defaults and compare every system."""
    from moeless_cli.jobs.bench import BenchRequest, run_bench

    request = BenchRequest(model=model, preset=preset, hardware=hardware, gpus=gpus, trace=trace, dataset=dataset,
                           batching=batching, mode=mode, time_model=time_model, max_requests=max_requests,
                           time_scale=time_scale, keep_alive_s=keep_alive, equal_budget=equal_budget,
                           num_prompts=num_prompts, epochs=epochs, out=out, pareto=pareto,
                           pareto_iterations=pareto_iterations,
                           devices=tuple(d.strip() for d in devices.split(",") if d.strip()) or ("cpu",))
    with make_progress(disable=json_output) as progress:
        task = progress.add_task("bench", total=None)

        def on_progress(name: str, done: int, total: int) -> None:
            progress.update(task, description=f"simulating {name}", completed=done, total=total)

        result = run_bench(request, lambda message: progress.update(task, description=message), on_progress)
    if json_output:
        emit_json(result.to_json())
        return
    _print_table(result)
    err_console.print(f"wrote {', '.join(str(f) for f in result.files)}", markup=False, highlight=False)


def _print_table(result: BenchResult) -> None:
    from rich.table import Table

    from moeless_cli.bench.outputs import TABLES, table_rows

    s = result.setting
    name = s["preset"]["name"] if s.get("preset") else s["model"]
    heading = (f"{name} on {s['gpus']} x {s['hardware']}, {s['trace']} ({s['requests']} requests), "
               f"{s['batching']} batching, time model {s['time_model']}")
    rows = table_rows(result)
    for title, columns in TABLES:
        table = Table(title=f"{title}: {heading}")
        for name, key in columns:
            table.add_column(name, justify="left" if key == "system" else "right", no_wrap=key == "system")
        for row in rows:
            table.add_row(*[row[key] for _, key in columns])
        console.print(table)
    same = "measured in each system's own run" if result.mode == "real" else "on the same batches for every system"
    console.print(f"MoE-layer latency {same}; ratios are of the mean. Costs billed alike for every system: GB·s live "
                  "(live instances x lifetime, keep-alive and pinned included) and GB·s per invocation.")
    if result.mode == "sim":
        from moeless_cli.bench.outputs import against_the_paper

        console.print(f"Against the paper: {against_the_paper(result.ratios)}")
    _print_pareto(result.pareto)
    check = result.simulator_check
    if check:
        errors = ", ".join(f"{name} {row['error']:+.1%} (decision {row['control_ms']:.3f} ms, not simulated)"
                           for name, row in check["systems"].items())
        console.print(f"Simulator vs real (time model fitted on the other systems' runs): error of the mean "
                      f"MoE-layer time without the policy's decision: {errors}.")


def _print_pareto(pareto: dict | None) -> None:
    from rich.table import Table

    from moeless_cli.bench.outputs import PARETO_COLUMNS, pareto_caption, pareto_rows

    if not pareto:
        return
    table = Table(title="Latency-memory Pareto")
    for name, key in PARETO_COLUMNS:
        table.add_column(name, justify="left" if key in ("memory", "system") else "right")
    for row in pareto_rows(pareto):
        table.add_row(*[row[key] for _, key in PARETO_COLUMNS])
    console.print(table)
    console.print(pareto_caption(pareto))


def register(app: typer.Typer) -> None:
    app.command(name="bench", help=HELP)(bench)
