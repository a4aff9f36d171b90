"""Atomic file and directory writes: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import orjson

from moeless_cli.errors import MoelessError


def ensure_writable_parent(path: Path) -> None:
    """Create `path`'s directory if needed and check it is writable: callers run it before minutes of
    work so a bad output path fails first, and every atomic writer runs it before writing."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoelessError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise MoelessError(f"output directory {parent} is not writable")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory, then rename."""
    path = Path(path)
    ensure_writable_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MoelessError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise MoelessError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (orjson; numpy arrays and scalars allowed)."""
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    return write_bytes_atomic(path, data + b"\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning missing or corrupt files into one-line user errors."""
    path = Path(path)
    if not path.is_file():
        raise MoelessError(f"{what} not found: {path}")
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise MoelessError(f"{what} {path} is not valid JSON: {exc}") from None


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory next to `final`; on success it replaces `final`, on error it vanishes.

    Readers never see a half-written directory, and a failed run leaves no partial output.
    """
    final = Path(final)
    ensure_writable_parent(final)
    if final.exists() and not final.is_dir():
        raise MoelessError(f"output path {final} exists and is not a directory")
    if final.exists() and not overwrite:
        raise MoelessError(f"output directory {final} already exists")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise MoelessError(f"cannot write {final}: {exc.strerror}") from None
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
