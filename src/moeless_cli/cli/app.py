"""The `moeless` console script: a typer app that every command file registers itself on."""

from __future__ import annotations

import importlib

import typer

from moeless_cli import __version__

app = typer.Typer(
    name="moeless",
    help="Serverless-style expert scaling and placement for MoE LLM serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Pipeline order; each module defines `register(app)`. Heavy imports (torch, transformers,
# datasets) happen inside the commands so `moeless --help` and `moeless plan` stay fast.
COMMAND_MODULES = ("profile", "train_predictor", "plan", "serve", "bench", "models")

for _name in COMMAND_MODULES:
    importlib.import_module(f"moeless_cli.cli.{_name}").register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"moeless {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """moeless: profile -> train-predictor -> plan -> serve -> bench."""


def main() -> None:
    app()
