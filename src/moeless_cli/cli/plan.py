"""`moeless plan`: loads -> replica counts, placement and token shares (a plan file); `plan export`."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded, make_progress
from moeless_cli.errors import MoelessError, require_choice

HELP = "Solve expert scaling and placement into a plan file."
plan_app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)


def _read_loads(profile: Optional[Path], loads: Optional[Path], where: list[str]) -> tuple[Any, dict[str, Any], str]:
    """Returns load [layers, experts], provenance for the plan file, and a name for the default out."""
    import numpy as np

    if (profile is None) == (loads is None):
        raise MoelessError("give exactly one of --profile DIR or --loads FILE.csv")
    if loads is not None:
        from moeless_cli.loads_csv import parse_where, read_loads_csv

        filters = parse_where(where)
        load = read_loads_csv(loads, filters)
        name = "-".join([loads.stem, *filters.values()])
        return load, {"loads": str(loads), "where": filters}, name
    if where:
        raise MoelessError("--where filters apply to --loads CSV files only")
    from moeless_cli.profiling import load_profile

    prof = load_profile(profile)
    load = np.asarray(prof.load, dtype=np.float64).sum(axis=0)  # [layers, experts]
    meta = {"profile": str(profile), "model_id": prof.model_id, "config_hash": prof.config_hash,
            "expert_bytes": prof.manifest.get("expert_bytes"), "moe_layer_ids": prof.moe_layer_ids,
            "_routing": (prof.topk_ids, prof.token_request, prof.token_phase)}
    return load, meta, profile.name


def _spare_batches(source: dict[str, Any], num_experts: int) -> Any:
    """Sample batches [batches, layers, experts] from the profile's per-token routing, for --spares."""
    from moeless_cli.planning.spares import sample_token_batches

    topk, request, phase = source.get("_routing") or (None, None, None)
    if topk is None or request is None or phase is None:
        raise MoelessError("--spares needs a --profile with per-token routing (record one with `moeless profile`); "
                           "a --loads CSV or an imported profile has only counts")
    return sample_token_batches(topk, request, phase, num_experts)


def _slots(num_layers: int, num_experts: int, gpus: int, memory_gb: Optional[float], expert_mb: Optional[float],
           slots_per_gpu: Optional[int], joint: bool) -> tuple[Optional[int], Optional[int]]:
    """Per-layer slots and (joint) total slots per GPU, from slots or from memory / expert size."""
    if slots_per_gpu is not None and memory_gb is not None:
        raise MoelessError("give either --slots-per-gpu or --gpu-memory-gb with --expert-mb, not both")
    if slots_per_gpu is not None:
        if slots_per_gpu < 1:
            raise MoelessError("--slots-per-gpu must be at least 1")
        return slots_per_gpu, (slots_per_gpu * num_layers if joint else None)
    if memory_gb is None:
        return None, None
    if expert_mb is None or expert_mb <= 0 or memory_gb <= 0:
        raise MoelessError("--gpu-memory-gb needs a positive --expert-mb (size of one expert's weights)")
    total = int(memory_gb * 1024 // expert_mb)  # replicas a GPU holds over all layers
    need = num_layers * math.ceil(num_experts / gpus)
    if total < need:
        missing_gb = (need * expert_mb - memory_gb * 1024) / 1024
        raise MoelessError(
            f"experts do not fit: {num_layers} layers x {num_experts} experts on {gpus} GPUs need "
            f"{need * expert_mb / 1024:.2f} GB per GPU, {missing_gb:.2f} GB more than --gpu-memory-gb {memory_gb:g}"
        )
    return (None, total) if joint else (total // num_layers, None)


@plan_app.callback()
@guarded
def plan(
    ctx: typer.Context,
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile directory (loads summed over iterations)."),
    loads: Optional[Path] = typer.Option(None, "--loads", help="CSV with columns layer,expert,count."),
    where: list[str] = typer.Option([], "--where", help="Filter CSV rows, COLUMN=VALUE (repeatable)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Expert-parallel GPUs (required)."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes the GPUs are spread over."),
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
    import numpy as np

    from moeless_cli.plan_io import read_plan, write_plan
    from moeless_cli.planning import SOLVERS, PlanningProblem, solve
    from moeless_cli.planning.metrics import CostModel, imbalance, plan_metrics, static_gpu_loads
    from moeless_cli.planning.topology import build_topology, pair_seconds_per_gb

    if gpus is None:
        raise MoelessError("--gpus is required (expert-parallel GPUs to plan for)")
    require_choice("--solver", solver, SOLVERS)
    if backend not in ("cbc", "highs"):
        raise MoelessError(f"unknown --backend {backend!r}; choose cbc or highs")
    if backend == "highs":
        import importlib.util

        if importlib.util.find_spec("highspy") is None:
            raise MoelessError("--backend highs needs the highspy package (pip install highspy); or use cbc")
    if time_limit <= 0:
        raise MoelessError("--time-limit must be positive")
    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise MoelessError(f"--gpus ({gpus}) must be a positive multiple of --nodes ({nodes})")
    load, source, source_name = _read_loads(profile, loads, where)
    if spares and joint:
        raise MoelessError("--spares fills each layer's own slots; it does not combine with --joint")
    batches = _spare_batches(source, load.shape[1]) if spares else None
    if expert_mb is None and source.get("expert_bytes"):
        expert_mb = float(source["expert_bytes"]) / 2**20  # the profiled model's expert size
    num_layers, num_experts = load.shape
    per_layer, total_slots = _slots(num_layers, num_experts, gpus, gpu_memory_gb, expert_mb, slots_per_gpu, joint)
    previous = read_plan(previous_plan)[0] if previous_plan is not None else None
    problem = PlanningProblem(
        num_gpus=gpus, num_nodes=nodes, slots_per_gpu=per_layer, replica_budget=replica_budget, joint=joint,
        total_slots_per_gpu=total_slots, previous=previous, expert_bytes=(expert_mb or 0.0) * 2**20,
        intra_node_gbps=intra_gbps, inter_node_gbps=inter_gbps, time_limit_s=time_limit, backend=backend,
    )
    out = out or Path("plans") / f"{source_name}-{solver}-g{gpus}.json"
    start = time.perf_counter()
    with make_progress(disable=json_out) as progress:
        task = progress.add_task(f"planning ({solver})", total=num_layers)
        result = solve(solver, load, problem, on_layer=lambda i: progress.advance(task))
        straggle = None
        if batches is not None:
            from moeless_cli.planning.spares import fill_plan_spares, straggle_per_layer

            progress.update(task, description="spare replicas")
            before = straggle_per_layer(result.plan, batches)
            result.plan = fill_plan_spares(result.plan, batches, problem.slots_for(num_experts),
                                           problem.max_replicas(num_experts))
            straggle = list(zip(before, straggle_per_layer(result.plan, batches)))
    seconds = time.perf_counter() - start
    pair_cost = pair_seconds_per_gb(build_topology(gpus, nodes, intra_gbps, inter_gbps))
    metrics = plan_metrics(result.plan, load, CostModel(expert_gb=(expert_mb or 0.0) / 1024), previous, pair_cost)
    rows = []
    for i, (info, m) in enumerate(zip(result.infos, metrics)):
        rows.append({
            "layer": i,
            "imbalance_before": imbalance(static_gpu_loads(load[i], gpus)),
            "imbalance_after": m.imbalance,
            "replicas": m.replicas,
            "gap": info.gap,
            "status": info.status,
            "method": info.method,
            "max_load": info.max_load,
            "lower_bound": info.lower_bound,
            "moved": m.moved,
            "move_seconds": m.move_seconds,
            "time_s": m.time_s,
            "cost_gbs": m.cost_gbs,
            "seconds": info.seconds,
        })
        if straggle is not None:  # busiest GPU / ceil(T / G) over the profile's sample batches, optimal split
            rows[-1].update({"batch_straggle_before_spares": straggle[i][0],
                             "batch_straggle_after_spares": straggle[i][1]})
    extra = {
        "solver": solver,
        "num_nodes": nodes,
        "topology": {"intra_node_gbps": intra_gbps, "inter_node_gbps": inter_gbps},
        "slots_per_gpu": [int(layer.slots_used(gpus).max()) for layer in result.plan.layers],
        "model_id": source.get("model_id"),
        "config_hash": source.get("config_hash"),
        "moe_layer_ids": source.get("moe_layer_ids"),
        "loads_hash": hashlib.sha256(np.ascontiguousarray(load).tobytes()).hexdigest()[:16],
        "source": {k: v for k, v in source.items() if k in ("loads", "where", "profile")},
        "spares": spares,
        "solve_seconds": seconds,
        "metrics": [{k: r[k] for k in ("imbalance_after", "replicas", "gap", "lower_bound", "status", "moved")}
                    for r in rows],
    }
    write_plan(out, result.plan, extra)
    summary = {
        "out": str(out), "solver": solver, "solve_seconds": seconds, "num_gpus": gpus, "num_nodes": nodes,
        "num_layers": num_layers, "num_experts": num_experts, "layers": rows,
        "max_imbalance_after": max(r["imbalance_after"] for r in rows),
        "max_gap": max(r["gap"] for r in rows),
        "replicas": sum(r["replicas"] for r in rows),
        "moved": sum(r["moved"] for r in rows),
        "time_s": sum(r["time_s"] for r in rows),  # MoE time of one step under the alpha/beta model
        "cost_gbs": sum(r["cost_gbs"] for r in rows),
    }
    if json_out:
        emit_json(summary)
        return
    _print_table(summary)


def _print_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"moeless plan ({summary['solver']}, {summary['num_gpus']} GPUs)")
    spares = "batch_straggle_after_spares" in summary["layers"][0]
    columns = ["layer", "imbalance before", "imbalance after", "replicas", "gap", "status"]
    for col in columns + (["batch straggle", "with spares"] if spares else []):
        table.add_column(col, justify="right")
    for r in summary["layers"]:
        cells = [str(r["layer"]), f"{r['imbalance_before']:.4f}", f"{r['imbalance_after']:.4f}",
                 str(r["replicas"]), f"{100 * r['gap']:.3f}%", r["status"]]
        if spares:
            cells += [f"{r['batch_straggle_before_spares']:.4f}", f"{r['batch_straggle_after_spares']:.4f}"]
        table.add_row(*cells)
    console.print(table)
    if spares:
        console.print("batch straggle: busiest GPU / ceil(tokens / GPUs) over sample batches of the profile, "
                      "after the best whole-token split (1.0 = Oracle's floor)")
    console.print(f"wrote {summary['out']} in {summary['solve_seconds']:.2f} s; worst imbalance "
                  f"{summary['max_imbalance_after']:.4f}, worst gap {100 * summary['max_gap']:.3f}%")


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
    from moeless_cli.fileio import write_json_atomic
    from moeless_cli.interop import describe_export, export_for_engine

    doc, summary = export_for_engine(plan_file, fmt, dense_layers, profile)
    out = out or plan_file.with_name(f"{plan_file.stem}.{fmt}.json")
    write_json_atomic(out, doc)
    summary = {"out": str(out), **summary}
    if json_out:
        emit_json(summary)
    else:
        console.print(describe_export(summary), markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan", help=HELP)
