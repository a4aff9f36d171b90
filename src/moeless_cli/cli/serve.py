"""`moeless serve`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "Serve a request trace with expert parallelism and serverless experts (issue: serve)"


def register(app: typer.Typer) -> None:
    app.command(
        name="serve",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("serve", HELP))
