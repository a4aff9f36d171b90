"""The output-path policy every writer follows, and atomic writes: outputs appear whole or not at all.

Policy (checked before any long work, and again when writing):
- a file output is a regular file or nothing: a symlink is written through to its target, a
  directory, device, pipe or socket is refused, and so is an output that is also an input;
- a directory output is new, empty, or one moeless wrote (a profile, a bench folder): a folder
  holding anything else is never removed or replaced, and replacing a moeless output needs --force;
- names longer than a file system allows, unwritable folders and paths through a file fail first;
- a write is read back (its size) so one that did not land is reported, never silently lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from moeless_cli.errors import MoelessError

NAME_MAX = 255  # bytes in one path component (Linux and macOS file systems)
PATH_MAX = 4096  # bytes in a whole path (Linux)
TEMP_STEM = 64  # characters of the final name kept in a temp name, so temp names stay short


def check_name_lengths(path: str | Path, what: str = "path") -> None:
    """Refuse a path whose components or whole length the file system cannot hold."""
    path = Path(path)
    if len(os.fsencode(str(path))) > PATH_MAX:
        raise MoelessError(f"{what} is {len(os.fsencode(str(path)))} bytes long; paths may have at most {PATH_MAX}")
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise MoelessError(f"{what} {str(path)[:60]}...: the name {part[:40]!r}... is {size} bytes; "
                               f"a file or folder name may have at most {NAME_MAX}")


def _target(path: Path) -> Path:
    """Where a write to `path` lands: symlinks (also dangling ones) followed to what they name."""
    return Path(os.path.realpath(path))


def _check_parent(target: Path, what: str) -> None:
    """The nearest existing folder above `target` must be a writable directory."""
    for parent in target.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise MoelessError(f"cannot create {what} {target}: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise MoelessError(f"cannot create {what} {target}: folder {parent} is not writable")
            return


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def output_file(path: str | Path, what: str = "--out", inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check a file output before the work that produces it; returns the path to write (a
    symlink's target). Refuses directories, devices, pipes, sockets, unwritable places, names too
    long, and an output that is one of `inputs`."""
    check_name_lengths(path, what)
    target = _target(Path(path))
    if os.path.lexists(target):
        mode = os.stat(target).st_mode
        if stat.S_ISDIR(mode):
            raise MoelessError(f"{what} {path} is a directory; give a file path")
        if not stat.S_ISREG(mode):
            raise MoelessError(f"{what} {path} is not a regular file (a device, pipe or socket); give a file path")
        for source in inputs:
            if source is not None and _same_file(target, Path(source)):
                raise MoelessError(f"{what} {path} is also an input ({source}); give another output path")
    _check_parent(target, what)
    return target


def ensure_writable_parent(path: Path) -> None:
    """Create `path`'s directory if needed and check it is writable."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoelessError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise MoelessError(f"output directory {parent} is not writable")


def _file_mode(target: Path, new: int = 0o666) -> int:
    """An existing file or folder keeps its permissions; a new one gets `new` less the umask
    (temp files and folders are made private, 0o600 / 0o700)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(target).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return new & ~mask


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` (through a symlink, to its target) via a temp file in the same
    directory, then rename; the written size is checked so a write that did not land is an error."""
    target = output_file(path, "output")
    ensure_writable_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:TEMP_STEM]}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise MoelessError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode(target))
            if os.fstat(f.fileno()).st_size != len(data):
                raise MoelessError(f"cannot write {path}: the write did not land ({len(data)} bytes sent)")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise MoelessError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (orjson; numpy arrays and scalars allowed)."""
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    return write_bytes_atomic(path, data + b"\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning missing or corrupt files into one-line user errors."""
    path = Path(path)
    check_name_lengths(path, what)
    if not path.is_file():
        raise MoelessError(f"{what} not found: {path}")
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise MoelessError(f"{what} {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise MoelessError(f"cannot read {what} {path}: {exc.strerror}") from None


def _cwd_or_above(target: Path) -> bool:
    cwd = Path.cwd().resolve()
    return target == cwd or target in cwd.parents


def output_directory(path: str | Path, what: str, is_ours: Callable[[Path], bool], force: bool = False,
                     kind: str = "moeless output") -> Path:
    """Check a directory output before the work; returns the directory to write (a symlink's target).

    It may be new or empty; a folder holding files is replaced only when `is_ours(folder)` says
    moeless wrote it (a `kind`) and `force` is set: nothing else is ever removed."""
    check_name_lengths(path, what)
    target = _target(Path(path))
    if _cwd_or_above(target):
        raise MoelessError(f"{what} {path} is the current folder (or one above it); give a new folder name")
    if os.path.lexists(target):
        if not target.is_dir():
            raise MoelessError(f"{what} {path} exists and is not a directory")
        if any(target.iterdir()):
            if not is_ours(target):
                raise MoelessError(f"{what} {path} is a folder holding files moeless did not write; "
                                   "give a new or empty folder (nothing was changed)")
            if not force:
                raise MoelessError(f"{what} {path} already holds a {kind}; give --force to replace it, "
                                   "or another folder")
    _check_parent(target, what)
    return target


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory next to `final`; on success it replaces `final`, on error it vanishes.

    Readers never see a half-written directory, and a failed run leaves no partial output. Callers
    check `final` with `output_directory` first: this replaces whatever directory is there.
    """
    final = _target(Path(final))
    check_name_lengths(final, "output directory")
    ensure_writable_parent(final)
    if final.exists() and not final.is_dir():
        raise MoelessError(f"output path {final} exists and is not a directory")
    if final.exists() and not overwrite:
        raise MoelessError(f"output directory {final} already exists")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:TEMP_STEM]}.", suffix=".tmp", dir=final.parent))
        os.chmod(tmp, _file_mode(final, 0o777))
    except OSError as exc:
        raise MoelessError(f"cannot write {final}: {exc.strerror}") from None
    try:
        yield tmp
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, final: Path) -> None:
    """Put directory `new` at `final`, removing the directory that was there only once `new` is in place."""
    if not final.exists():
        os.replace(new, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name[:TEMP_STEM]}.", suffix=".old", dir=final.parent))
    os.replace(final, old / "old")
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old / "old", final)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


@contextlib.contextmanager
def restored_on_failure(directory: str | Path) -> Iterator[Path]:
    """Run a block that writes into `directory` (returned, symlinks followed); if it fails, the
    directory is put back as it was: no new files beside stale ones, no earlier output lost.

    The old contents are hard-linked aside first: moeless replaces files by rename and never edits
    them in place, so the links keep the old bytes at no copying cost."""
    directory = _target(Path(directory))
    kept: Path | None = None
    if directory.is_dir():
        kept = Path(tempfile.mkdtemp(prefix=f".{directory.name[:TEMP_STEM]}.", suffix=".kept", dir=directory.parent))
        try:
            shutil.copytree(directory, kept / "kept", symlinks=True, copy_function=_link_or_copy)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(kept, ignore_errors=True)
            raise MoelessError(f"cannot keep a copy of {directory} while it is rewritten: {exc}") from None
    try:
        yield directory
    except BaseException:
        if kept is not None:
            _swap_in(kept / "kept", directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        if kept is not None:
            shutil.rmtree(kept, ignore_errors=True)
