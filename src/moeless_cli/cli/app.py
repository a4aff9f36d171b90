"""The `moeless` console script: a typer app that every command file registers itself on."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from moeless_cli import __version__
from moeless_cli.cli.common import print_error


class OneLineErrors(TyperGroup):
    """The root command group: click's usage errors print in the same one-line `error: ...` form
    as every other error (exit code 2), not as a boxed usage message."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            print_error("aborted")
            code = 1
        except typer.TyperException as exc:  # click's errors: usage errors, bad parameters
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                code = 0
            else:
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                print_error(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
                code = getattr(exc, "exit_code", 2)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
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
