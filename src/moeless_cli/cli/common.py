"""Shared CLI plumbing: consoles, error guard, --json output, progress bars."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moeless_cli.errors import MoelessError

# Console() without a file follows sys.stdout at write time, so CliRunner captures it. Piped
# output (make demo, CI logs) would otherwise be cut to 80 columns and truncate wide tables.
_PIPED_WIDTH = 160 if not sys.stdout.isatty() and not os.environ.get("COLUMNS") else None
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION_HELP = "Print machine-readable JSON on stdout instead of tables."


def guarded(fn: F) -> F:
    """Turn MoelessError into `error: ...` on stderr and a non-zero exit, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MoelessError as exc:
            message = " ".join(str(exc).split())  # one line, always
            err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout (numpy values allowed)."""
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    sys.stdout.flush()


def make_progress(disable: bool = False) -> Progress:
    """A rich progress bar on stderr; disabled for --json runs so stdout stays clean."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=disable or bool(os.environ.get("MOELESS_NO_PROGRESS")),
        transient=True,
    )
