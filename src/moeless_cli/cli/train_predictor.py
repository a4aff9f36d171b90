"""`moeless train-predictor`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "Train layer-aware expert-load predictors (issue: train-predictor)"


def register(app: typer.Typer) -> None:
    app.command(
        name="train-predictor",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("train-predictor", HELP))
