"""`moeless bench`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "Every system side by side (issue: bench)"


def register(app: typer.Typer) -> None:
    app.command(
        name="bench",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("bench", HELP))
