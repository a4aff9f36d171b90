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
OPTION_HELP = {
    "hardware": "GPU model: a6000, h100, h200; default: the preset's (a6000; h100 for llama-4-scout, h200 for "
                "deepseek-v3).",
    "dataset": "Prompts whose routing is recorded (built-in, e.g. mix, or shift: code, then math, then prose; or a file).",
    "mode": "sim (simulated cluster), real (serve's runtime), or auto: real when this machine has --gpus CUDA devices.",
    "time_model": "physical (roofline GEMMs with weight streaming, collective latency), compute (an idealisation: "
                  "no weight streaming), roofline, or paper (comparison only).",
    "decision": "Per-layer charge of split decisions: measured (moeless-paper's host code timed; the device "
                "splits' kernels and EPLB's replica pick modelled), none, or seconds.",
    "in_sample": "Replay the very prompts and trace window the plan, spares and predictors learned from "
                 "(default: held out).",
    "max_requests": "Trace requests replayed (held out: the ones after the first as many; in-sample: the first).",
    "equal_budget": "Hold moeless-paper and moeless to EPLB's replicas per layer (default: they scale within GPU "
                    "memory).",
    "num_prompts": "Prompts the learners see (held out: as many again are profiled to replay).",
}


@guarded
def bench(
    model: Optional[str] = typer.Option(None, "--model", help="Routing model (built-in or checkpoint); default: the preset's."),
    preset: str = typer.Option("mixtral-8x7b", "--preset", help="Model sizes to simulate."),
    hardware: Optional[str] = typer.Option(None, "--hardware", help=OPTION_HELP["hardware"]),
    gpus: int = typer.Option(8, "--gpus", help="GPUs in the simulated cluster."),
    trace: str = typer.Option("azure-conv", "--trace", help="Arrival trace (built-in name or CSV/JSONL)."),
    dataset: str = typer.Option("mix", "--dataset", help=OPTION_HELP["dataset"]),
    batching: str = typer.Option("continuous", "--batching", help="continuous, or paper (one-second batches)."),
    mode: str = typer.Option("auto", "--mode", help=OPTION_HELP["mode"]),
    time_model: str = typer.Option("physical", "--time-model", help=OPTION_HELP["time_model"]),
    decision: str = typer.Option("measured", "--decision-cost", help=OPTION_HELP["decision"]),
    in_sample: bool = typer.Option(False, "--in-sample", help=OPTION_HELP["in_sample"]),
    max_requests: int = typer.Option(200, "--max-requests", help=OPTION_HELP["max_requests"]),
    time_scale: float = typer.Option(1.0, "--time-scale", help=">1 compresses arrivals."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Serverless keep-alive, seconds."),
    equal_budget: bool = typer.Option(False, "--equal-budget", help=OPTION_HELP["equal_budget"]),
    num_prompts: int = typer.Option(64, "--num-prompts", help=OPTION_HELP["num_prompts"]),
    epochs: int = typer.Option(30, "--epochs", help="Predictor training epochs."),
    devices: str = typer.Option("cpu", "--devices", help="Real mode: comma-separated devices (cpu, cuda:0, ...)."),
    pareto: bool = typer.Option(
        True, "--pareto/--no-pareto",
        help="Sim mode: sweep replica memory per layer for eplb, eplb+balanced, moeless-paper, moeless (pareto.png).",
    ),
    pareto_iterations: int = typer.Option(
        400, "--pareto-iterations", help="The sweep replays this many first iterations of the same batches."
    ),
    ablation: bool = typer.Option(
        False, "--ablation", help="Sim mode: also run moeless with each part removed in turn (predictor, spares, "
        "placement, balancing, scale-in)."
    ),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Output directory (cached stages are reused)."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Run the whole pipeline on built-in defaults and compare every system."""
    from moeless_cli.jobs.bench import BenchRequest, run_bench

    request = BenchRequest(model=model, preset=preset, hardware=hardware, gpus=gpus, trace=trace, dataset=dataset,
                           batching=batching, mode=mode, time_model=time_model, decision=decision,
                           in_sample=in_sample, max_requests=max_requests,
                           time_scale=time_scale, keep_alive_s=keep_alive, equal_budget=equal_budget,
                           num_prompts=num_prompts, epochs=epochs, out=out, pareto=pareto,
                           pareto_iterations=pareto_iterations, ablation=ablation,
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
