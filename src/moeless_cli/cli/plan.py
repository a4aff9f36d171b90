"""`moeless plan`: loads -> replica counts, placement and token shares (a plan file); `plan export`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded, make_progress
from moeless_cli.errors import MoelessError

if TYPE_CHECKING:
    from rich.progress import Progress

    from moeless_cli.jobs.plan import PlanProgress, PlanResult

HELP = "Solve expert scaling and placement into a plan file."
plan_app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)


@plan_app.callback()
@guarded
def plan(
    ctx: typer.Context,
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile directory (loads summed over iterations)."),
    loads: Optional[Path] = typer.Option(None, "--loads", help="CSV with columns layer,expert,count."),
    where: list[str] = typer.Option([], "--where", help="Filter CSV rows, COLUMN=VALUE (repeatable)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Expert-parallel GPUs (required)."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes the GPUs are spread over."),
    groups: int = typer.Option(1, "--groups", help="Model's expert groups (DeepSeek-V3: 8); eplb packs them on nodes."),
    gpu_memory_gb: Optional[float] = typer.Option(None, "--gpu-memory-gb", help="Memory per GPU for experts."),
    expert_mb: Optional[float] = typer.Option(None, "--expert-mb", help="Size of one expert's weights, MB."),
    slots_per_gpu: Optional[int] = typer.Option(None, "--slots-per-gpu", help="Replicas per GPU per layer."),
    replica_budget: Optional[int] = typer.Option(
        None, "--replica-budget", help="Most replicas per layer (joint: in all)."
    ),
    joint: bool = typer.Option(False, "--joint", help="Share the budgets across layers (skewed layers get more)."),
    spares: bool = typer.Option(
        False, "--spares",
        help="Fill unused slots (within the budget) with spare replicas where single batches of the profile "
             "straggle; for runtimes that balance each batch (serve --policy moeless). Spares get share 0.",
    ),
    previous_plan: Optional[Path] = typer.Option(None, "--previous-plan", help="Plan now loaded (moves cost)."),
    solver: str = typer.Option("ilp", "--solver", help="ilp, eplb, even-split, moeless-paper or static."),
    backend: str = typer.Option("cbc", "--backend", help="ILP backend: cbc or highs."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds for the whole run (ilp)."),
    intra_gbps: float = typer.Option(450.0, "--intra-node-gbps", help="GPU-GPU bandwidth inside a node."),
    inter_gbps: float = typer.Option(50.0, "--inter-node-gbps", help="Bandwidth between nodes."),
    out: Optional[Path] = typer.Option(None, "--out", help="Plan file (default plans/<source>-<solver>-g<G>.json)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Solve expert scaling and placement into a plan file."""
    if ctx.invoked_subcommand is not None:
        return
    from moeless_cli.jobs.plan import PlanRequest, plan as make_plan

    request = PlanRequest(
        gpus=gpus, profile=profile, loads=loads, where=tuple(where), nodes=nodes, groups=groups,
        gpu_memory_gb=gpu_memory_gb, expert_mb=expert_mb, slots_per_gpu=slots_per_gpu, replica_budget=replica_budget,
        joint=joint, spares=spares, previous_plan=previous_plan, solver=solver, backend=backend, time_limit=time_limit, intra_gbps=intra_gbps,
        inter_gbps=inter_gbps, out=out,
    )
    with make_progress(disable=json_out) as progress:
        result = make_plan(request, progress=_plan_progress(progress))
    if json_out:
        emit_json(result.to_json())
        return
    _print_table(result)


def _plan_progress(progress: Progress) -> PlanProgress:
    """The plan job's steps on a progress bar: one tick per solved layer, then the spares step."""
    from moeless_cli.jobs.plan import PlanProgress

    task = progress.add_task("planning", total=None)
    return PlanProgress(
        start=lambda description, layers: progress.update(task, description=description, total=layers),
        layer_done=lambda: progress.advance(task),
        say=lambda description: progress.update(task, description=description),
    )


def _print_table(result: PlanResult) -> None:
    from rich.table import Table

    table = Table(title=f"moeless plan ({result.solver}, {result.num_gpus} GPUs)")
    spares = result.layers[0].straggle_after_spares is not None
    columns = ["layer", "imbalance before", "imbalance after", "replicas", "gap", "status"]
    for col in columns + (["batch straggle", "with spares"] if spares else []):
        table.add_column(col, justify="right")
    for r in result.layers:
        cells = [str(r.layer), f"{r.imbalance_before:.4f}", f"{r.imbalance_after:.4f}",
                 str(r.replicas), f"{100 * r.gap:.3f}%", r.status]
        if spares:
            cells += [f"{r.straggle_before_spares:.4f}", f"{r.straggle_after_spares:.4f}"]
        table.add_row(*cells)
    console.print(table)
    if spares:
        console.print("batch straggle: busiest GPU / ceil(tokens / GPUs) over sample batches of the profile, "
                      "after the best whole-token split (1.0 = Oracle's floor)")
    console.print(f"wrote {result.out} in {result.solve_seconds:.2f} s; worst imbalance "
                  f"{max(r.imbalance_after for r in result.layers):.4f}, "
                  f"worst gap {100 * max(r.gap for r in result.layers):.3f}%")


@plan_app.command("export")
@guarded
def export(
    plan_file: Path = typer.Argument(..., help="Plan file written by `moeless plan`."),
    fmt: str = typer.Option("sglang", "--format", help="sglang, sglang-logical-count, vllm or deepseek."),
    dense_layers: Optional[int] = typer.Option(
        None, "--dense-layers", help="sglang: K trivial rows for leading dense layers (default: plan's moe_layer_ids)."
    ),
    profile: Optional[Path] = typer.Option(
        None, "--profile", help="Profile with the loads (sglang-logical-count) and SGLang's layer count "
                                "(default: the plan's source profile)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default PLAN.<format>.json)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Write the plan as an engine's physical-to-logical expert map (equal shares; see docs/interop.md)."""
    from moeless_cli.fileio import output_file, write_json_atomic
    from moeless_cli.interop import describe_export, export_for_engine

    out = out or plan_file.with_name(f"{plan_file.stem}.{fmt}.json")
    output_file(out, "--out", inputs=[plan_file])  # never over the plan it reads
    doc, summary = export_for_engine(plan_file, fmt, dense_layers, profile)
    write_json_atomic(out, doc)
    summary = {"out": str(out), **summary}
    if json_out:
        emit_json(summary)
    else:
        console.print(describe_export(summary), markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan", help=HELP)
