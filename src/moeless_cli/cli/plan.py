"""`moeless plan`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "Solve expert scaling and placement into a plan file (issue: plan)"


def register(app: typer.Typer) -> None:
    app.command(
        name="plan",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("plan", HELP))
