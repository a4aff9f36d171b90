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

from moeless_cli.errors import MoelessError, UnwrittenReport

# Console() without a file follows sys.stdout at write time, so CliRunner captures it. Piped
# output (make demo, CI logs) would otherwise be cut to 80 columns and truncate wide tables.
_PIPED_WIDTH = 160 if not sys.stdout.isatty() and not os.environ.get("COLUMNS") else None
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION_HELP = "Print machine-readable JSON on stdout instead of tables."


def print_error(message: str) -> None:
    """`error: <message>` on stderr, on one line whatever the message holds."""
    err_console.print(f"error: {' '.join(str(message).split())}", markup=False, highlight=False, soft_wrap=True)


def _os_error_message(exc: OSError) -> str:
    """An OSError the checks did not foresee (a disk filling up, a name too long), as one line."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = f" ({' -> '.join(n if len(n) <= 80 else n[:77] + '...' for n in names)})" if names else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


def guarded(fn: F) -> F:
    """Turn MoelessError (and OSError, MemoryError) into `error: ...` on stderr and a non-zero
    exit, with no traceback; a finished report that could not be written is printed first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UnwrittenReport as exc:
            emit_json(exc.report)
            print_error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except MoelessError as exc:
            print_error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except OSError as exc:
            print_error(_os_error_message(exc))
            raise typer.Exit(code=2) from None
        except MemoryError:
            print_error("out of memory: the input asks for more than this machine holds; use smaller sizes")
            raise typer.Exit(code=2) from None
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
