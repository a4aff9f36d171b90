"""`moeless profile`: record expert routing of an MoE model over a workload; `profile import` CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded, make_progress
from moeless_cli.jobs.profile import DEFAULT_MODEL

if TYPE_CHECKING:
    from moeless_cli.jobs.profile import ProfileResult

HELP = "Record expert activations of an MoE model over a workload (or import load counts from a CSV)."


def _print_summary(result: ProfileResult) -> None:
    from rich.table import Table

    table = Table(title=f"expert load per MoE layer ({result.tokens or 'imported'} tokens)")
    for column in ("layer", "max", "mean", "max/mean", "hottest experts"):
        table.add_column(column, justify="right" if column != "hottest experts" else "left")
    for row in result.per_layer:
        table.add_row(str(row.layer), f"{row.max:.0f}", f"{row.mean:.1f}", f"{row.imbalance:.2f}",
                      ", ".join(map(str, row.hottest)))
    console.print(table)
    console.print(
        f"profile written to {result.out}: {result.layers} MoE layers x {result.experts} experts "
        f"(top-{result.top_k}), {result.iterations} iterations, {result.tokens} tokens"
    )
    if result.forward_seconds is not None:
        per_token = result.expert_seconds_per_token
        expert = f"; one expert: {per_token * 1e6:.2f} us/token" if per_token else ""
        console.print(f"domains: {', '.join(result.domains)}; forward passes took "
                      f"{result.forward_seconds:.2f} s{expert}")
    for line in result.import_notes.get("notes", []):
        console.print(line, markup=False)


def _show(result: ProfileResult, json_out: bool) -> None:
    if json_out:
        emit_json(result.to_json())
    else:
        _print_summary(result)


def run_profile(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Built-in model name or local HF checkpoint dir."),
    dataset: str = typer.Option("mix", "--dataset", "-d",
                                help="Built-in dataset (mix, gsm8k, humaneval, wikitext2, tinyshakespeare), "
                                     "a local .json/.jsonl/.parquet/.csv/.txt file, or a hub dataset name."),
    text_field: Optional[str] = typer.Option(None, "--text-field",
                                             help="Field holding the prompt (default: text, prompt, question, "
                                                  "conversations.0.value)."),
    num_prompts: int = typer.Option(32, "--num-prompts", "-n", help="Prompts to run (seeded random subset)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Prompts per batch."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", "-t", help="Greedy decode steps after prefill."),
    max_prompt_tokens: int = typer.Option(128, "--max-prompt-tokens", help="Keep at most this many prompt tokens."),
    router_samples: int = typer.Option(4096, "--router-samples",
                                       help="Tokens whose router inputs are kept (fp16, all MoE layers; "
                                            "samples x layers x hidden x 2 bytes)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the prompt subset and the router-input sample."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto "
                                                             "(default: float32 on CPU, the checkpoint's elsewhere)."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="torch CPU threads (default: 1 for models narrower than 1024 "
                                               "on CPU, else torch's choice; 0 = torch's choice)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile directory (default profiles/<model>-<dataset>/)."),
    force: bool = typer.Option(False, "--force", help="Replace a profile already at --out (never other folders)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Run prefill + greedy decode over a workload and record per-iteration expert load,
    per-token top-k expert ids, sampled router inputs and timings into a profile directory."""
    if ctx.invoked_subcommand is not None:
        return
    from moeless_cli.jobs.profile import ProfileRequest, record_profile
    from moeless_cli.profiling.runner import ProfileOptions

    options = ProfileOptions(num_prompts=num_prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             max_prompt_tokens=max_prompt_tokens, router_samples=router_samples, seed=seed)
    request = ProfileRequest(model=model, dataset=dataset, options=options, text_field=text_field, device=device,
                             dtype=dtype, threads=threads, out=out, force=force)
    with make_progress(disable=json_out) as progress:
        task = progress.add_task("profiling forward passes", total=None)
        result = record_profile(request, progress=lambda total: progress.update(task, total=total),
                                on_pass=lambda: progress.advance(task))
    _show(result, json_out)


def import_csv(
    files: list[Path] = typer.Argument(..., help="A CSV with columns layer,expert,count; SGLang expert-distribution "
                                                 "dumps (.pt; per_pass/per_token: one per rank); or a saved vLLM "
                                                 "EPLB load window (.pt/.npz). See docs/interop.md."),
    fmt: str = typer.Option("auto", "--format", help="auto (from the file), csv, sglang or vllm."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Keep rows where COLUMN=VALUE (repeatable)."),
    num_experts: Optional[int] = typer.Option(None, "--num-experts",
                                              help="Experts per layer: pads a CSV, checks an engine record's size."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token of the model the loads came from."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Profile directory (default profiles/<csv name>/)."),
    force: bool = typer.Option(False, "--force", help="Replace a profile already at --out (never other folders)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Turn load counts recorded elsewhere (a CSV, SGLang or vLLM records) into a load-only profile."""
    from moeless_cli.jobs.profile import ImportRequest, import_profile

    request = ImportRequest(files=tuple(files), format=fmt, where=tuple(where or ()), num_experts=num_experts,
                            top_k=top_k, out=out, force=force)
    _show(import_profile(request), json_out)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)
    group.callback(invoke_without_command=True)(guarded(run_profile))
    group.command(name="import")(guarded(import_csv))
    app.add_typer(group, name="profile")
