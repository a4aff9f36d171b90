"""`moeless profile`: not built yet."""

import typer

from moeless_cli.cli.common import not_available

HELP = "Record expert activations of an MoE model over a workload (issue: foundation)"


def register(app: typer.Typer) -> None:
    app.command(
        name="profile",
        help=f"[not available yet] {HELP}",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(not_available("profile", HELP))
