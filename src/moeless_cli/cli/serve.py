"""`moeless serve`: serve a request trace with expert parallelism and serverless expert functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded, make_progress

HELP = "Serve a request trace with expert parallelism and serverless experts; report latency and cost."


def register(app: typer.Typer) -> None:
    app.command(name="serve", help=HELP)(serve_command)


@guarded
def serve_command(
    model: str = typer.Option("tiny-mixtral", "--model", "-m", help="Built-in model name or a local checkpoint directory."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Plan file from `moeless plan` (moeless's start)."),
    predictor: Optional[Path] = typer.Option(None, "--predictor", help="Predictor file from `train-predictor`."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile of this model: policies' load history."),
    policy: str = typer.Option(
        "moeless", "--policy", help="moeless, moeless-paper, static, eplb, eplb+balanced or oracle (lossy)."
    ),
    backend: str = typer.Option("local", "--backend", help="local (one process) or dist (torchrun)."),
    devices: str = typer.Option("cpu", "--devices", help="Comma-separated devices workers go on (cpu, cuda:0,...)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Expert-parallel workers (default: plan's GPUs, else 4)."),
    dataset: str = typer.Option("mix", "--dataset", help="Prompt dataset: built-in name or a file."),
    trace: str = typer.Option("azure-conv", "--trace", help="Arrival trace: built-in name or a CSV/JSONL file."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Compress the trace's time by this factor."),
    max_requests: int = typer.Option(16, "--max-requests", help="Serve the first N requests of the trace."),
    max_output_tokens: Optional[int] = typer.Option(16, "--max-output-tokens", help="Cap each request's output."),
    max_prompt_tokens: Optional[int] = typer.Option(64, "--max-prompt-tokens", help="Cap each prompt's length."),
    token_budget: int = typer.Option(256, "--token-budget", help="Most tokens per iteration (continuous batching)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most requests running at once."),
    batching: str = typer.Option("continuous", "--batching", help="continuous, or paper (one-second batches)."),
    keep_alive: float = typer.Option(10.0, "--keep-alive", help="Seconds an idle replica stays warm."),
    gpu_price_per_hour: float = typer.Option(2.0, "--gpu-price-per-hour", help="USD per GPU-hour for costs."),
    distance: int = typer.Option(1, "--distance", help="Predict layer l+d while layer l runs."),
    expert_memory_mb: Optional[float] = typer.Option(
        None, "--expert-memory-mb", help="Most MiB of expert replicas one worker may hold (all layers)."),
    nnodes: int = typer.Option(1, "--nnodes", help="dist: machines the workers are split over (one torchrun each)."),
    node_rank: int = typer.Option(0, "--node-rank", help="dist: this machine's index (0 hosts the rendezvous)."),
    rdzv_endpoint: Optional[str] = typer.Option(
        None, "--rdzv-endpoint", help="dist, --nnodes > 1: node 0's HOST:PORT."),
    heartbeat_timeout: float = typer.Option(
        5.0, "--heartbeat-timeout", help="dist: seconds without a heartbeat before a rank is replaced."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    from moeless_cli.fileio import output_file
    from moeless_cli.jobs.serve import ServeRequest, serve

    request = ServeRequest(
        model=model, plan=plan, predictor=predictor, profile=profile, policy=policy, backend=backend,
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()), workers=workers, dataset=dataset,
        trace=trace, time_scale=time_scale, max_requests=max_requests, max_output_tokens=max_output_tokens,
        max_prompt_tokens=max_prompt_tokens, token_budget=token_budget, max_batch=max_batch, batching=batching,
        keep_alive_s=keep_alive, gpu_price_per_hour=gpu_price_per_hour, distance=distance,
        expert_memory_mb=expert_memory_mb, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
        heartbeat_timeout_s=heartbeat_timeout,
    )
    if out is not None:  # checked before the run, not after it
        output_file(out, "--out", inputs=[plan, predictor, Path(trace), Path(dataset)])
    with make_progress(disable=json_output) as bar:
        task = bar.add_task("serving", total=max_requests)
        result = serve(request, progress=lambda done, total: bar.update(task, completed=done, total=total))
    _show(result.report, out, json_output)
    if result.report.get("interrupted"):
        raise typer.Exit(code=130)


def _show(report: dict[str, Any], out: Path | None, json_output: bool) -> None:
    """Print the report as JSON or as tables, then write it to --out: a report that cannot be
    written is still shown."""
    from moeless_cli.fileio import write_json_atomic

    if json_output:
        emit_json(report)
    else:
        _print_tables(report)
    if out is not None:
        write_json_atomic(out, report)


def _fmt(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _print_tables(report: dict[str, Any]) -> None:
    from rich.table import Table

    req = report["requests"]
    title = f"moeless serve: {report['model']} · policy {report['policy']}" + (" (lossy)" if report["lossy"] else "")
    console.print(f"[bold]{title}[/bold] · {report['workers']} workers ({report['backend']}) · "
                  f"requests {req['completed']}/{req['submitted']} completed, {req['failed']} failed"
                  + (" · INTERRUPTED (partial report)" if report.get("interrupted") else ""))
    for fault in report.get("faults", []):
        after = f"recovered in {fault['recovery_s']:.1f} s" if fault["recovered"] else "not recovered"
        console.print(f"fault: rank {fault['rank']} {fault['cause']}; {after}")
    lat = Table(title="Latency (seconds)")
    for col in ("metric", "mean", "p50", "p90", "p99"):
        lat.add_column(col, justify="right" if col != "metric" else "left")
    for name in ("ttft", "tpot", "e2e"):
        s = report["latency_s"][name]
        lat.add_row(name.upper(), *(_fmt(s[k]) for k in ("mean", "p50", "p90", "p99")))
    console.print(lat)
    moe = Table(title="MoE layer forward (ms, slowest worker + dispatch + combine)")
    for col in ("layer", "mean", "p50", "p99"):
        moe.add_column(col, justify="right")
    for i, s in enumerate(report["moe_layer_ms_per_layer"]):
        moe.add_row(str(i), *(_fmt(s[k]) for k in ("mean", "p50", "p99")))
    s = report["moe_layer_ms"]
    moe.add_row("all", *(_fmt(s[k]) for k in ("mean", "p50", "p99")))
    console.print(moe)
    cost, fn = report["cost"], report["functions"]
    other = Table(title="Throughput, cost and functions")
    other.add_column("figure")
    other.add_column("value", justify="right")
    rows = [
        ("throughput (tokens/s)", _fmt(report["throughput_tokens_per_s"], digits=1)),
        ("GB·s live (billed alike: keep-alive, pinned incl.)", _fmt(cost["gbs_live"], digits=4)),
        ("GB·s per invocation (billed alike)", _fmt(cost["gbs_per_invocation"], digits=4)),
        ("GB·s as published (paper's asymmetric rule)", _fmt(cost["gbs_proxy"], digits=4)),
        ("serverless GPU·s / USD", f"{_fmt(cost['serverless_gpu_s'])} / {_fmt(cost['usd_serverless'], digits=6)}"),
        ("serverful GPU·s / USD", f"{_fmt(cost['serverful_gpu_s'])} / {_fmt(cost['usd_serverful'], digits=6)}"),
        ("cold starts / warm hits", f"{fn['cold_starts']} / {fn['warm_hits']}"),
        ("replicas created / retired", f"{fn['created']} / {fn['retired']}"),
        ("bytes moved (policy)", f"{fn['bytes_moved']:.0f}"),
        ("weight copies measured", f"{report['functions_measured']['created']} in "
                                   f"{report['functions_measured']['cold_start_s'] * 1e3:.2f} ms"),
        ("online step (ms, mean)", _fmt(report["online_step_ms"]["mean"])),
    ]
    for row in rows:
        other.add_row(*row)
    console.print(other)
