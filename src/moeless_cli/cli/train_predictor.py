"""`moeless train-predictor`: fit layer-aware expert-load predictors from a profile and score them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded, make_progress

if TYPE_CHECKING:
    from moeless_cli.jobs.predictor import TrainResult

HELP = "Train layer-aware expert-load predictors from a profile and compare them with the baselines."
METRIC_COLUMNS = (("topk_recall", "recall"), ("load_tvd", "TVD"), ("pearson", "r"), ("straggler_recall", "strag"))
TABLE_METHODS = ("moeless", "moeless-paper", "reused-gate", "ema", "last")


@guarded
def train_predictor(
    profile: list[Path] = typer.Option(
        ..., "--profile", help="Profile directory recorded with --router-samples (repeatable: one per traffic domain)."
    ),
    eval_profile: Optional[Path] = typer.Option(
        None, "--eval-profile", help="Evaluate on this profile (same model) instead of held-out requests."
    ),
    distance: list[int] = typer.Option([1], "--distance", help="Layers ahead to predict (repeatable)."),
    accuracy_threshold: float = typer.Option(
        0.8, "--accuracy-threshold", help="Paper method: fine-tune only layers whose top-k recall is below this."
    ),
    epochs: int = typer.Option(30, "--epochs", help="Most training epochs per predictor."),
    out: Optional[Path] = typer.Option(None, "--out", help="Predictor file (default <profile>/predictor.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model checkpoint, if not where the profile recorded it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the request split and training."),
    json_output: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Train predictors and print per-layer accuracy for moeless and the baselines."""
    from moeless_cli.jobs.predictor import TrainRequest, train_predictor as train

    request = TrainRequest(profiles=profile, eval_profile=eval_profile, distances=sorted(set(distance)),
                           accuracy_threshold=accuracy_threshold, epochs=epochs, out=out, model=model, seed=seed)
    with make_progress(disable=json_output) as progress:
        task = progress.add_task("training predictors", total=None)
        result = train(request, on_epoch=lambda total: progress.update(task, total=total, advance=1))
    if json_output:
        emit_json(result.to_json())
    else:
        _print_table(result)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_table(result: TrainResult) -> None:
    from rich.table import Table

    table = Table(title=f"predictors for {result.model_id} -> {result.out}")
    for name in ("layer", "d", "method"):
        table.add_column(name, justify="right" if name != "method" else "left")
    for _, short in METRIC_COLUMNS:
        table.add_column(short, justify="right")
    groups = [(str(e["layer"]), str(e["distance"]), e["methods"]) for e in result.layers]
    groups.append(("mean", "", result.summary))
    for layer, d, methods in groups:
        for i, method in enumerate(TABLE_METHODS):
            cells = [layer if i == 0 else "", d if i == 0 else "", method]
            cells += [_fmt(methods[method][metric]) for metric, _ in METRIC_COLUMNS]
            table.add_row(*cells, end_section=i == len(TABLE_METHODS) - 1)
    console.print(table)
    console.print(
        "recall: token top-k recall (higher is better); TVD: load error, total variation distance of per-expert "
        "load fractions per batch (lower is better); r: Pearson correlation of loads; strag: straggler recall "
        "(the truly top 10% experts predicted in the top 10%)."
    )
    split = result.split
    console.print(
        f"held out: {split['held_out']} ({split['test_requests']} requests, {split['test_tokens']} sampled tokens, "
        f"{split['test_batches']} batches); trained and scored in {result.train_seconds} s"
    )


def register(app: typer.Typer) -> None:
    app.command(name="train-predictor", help=HELP)(train_predictor)
