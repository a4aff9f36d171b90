"""`moeless models`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "List the built-in models and supported checkpoint families (issue: built-in models)"


def register(app: typer.Typer) -> None:
    app.command(
        name="models",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("models", HELP))
