"""The fuzz suites' harness (tests/test_fuzz_*.py): run one CLI input in its own workspace and check
what a user must always get back.

Every input ends in exit 0 (it was valid), or in exit 1-2 with exactly one `error:` line on stderr;
never a traceback, never a hang (past TIMEOUT_S), never a file outside the requested output added,
removed or changed. Each outcome is tallied per group (a loader or an option); with
MOELESS_FUZZ_TALLY=<file> the counts are written there at exit (benchmarks/fuzz_inputs.py prints
them), MOELESS_FUZZ_EXAMPLES=<n> runs n inputs per test instead of each test's own count, and
MOELESS_FUZZ_LOG=<file> appends each input's group, outcome and error line there.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import stat
import tempfile
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

TIMEOUT_S = float(os.environ.get("MOELESS_FUZZ_TIMEOUT", "60"))  # an input running longer counts as a hang
TALLY: dict[str, Counter] = defaultdict(Counter)  # group -> tried, ok, clean, traceback, hang, touched


def fuzz_settings(examples: int) -> settings:
    """Derandomized (the same inputs every run), no example database on disk, no deadline."""
    return settings(max_examples=int(os.environ.get("MOELESS_FUZZ_EXAMPLES") or examples), derandomize=True,
                    database=None, deadline=None, suppress_health_check=list(HealthCheck))


# Numbers and values a user or a broken file may hold: zero, negatives, fractions, the float edges,
# integers past any size, NaN and infinities, and things that are not numbers at all.
EDGE_NUMBERS = [0, -1, 1, 2, 3, 0.5, -0.0, 1.5, 2**31, 2**63, 10**30, 1e308, -1e308, 1e-308, 2e9,
                math.nan, math.inf, -math.inf]
EDGE_VALUES = EDGE_NUMBERS + [None, True, False, "", "x", "1", "nan", [], {}, [1, 2], {"a": 1}, [[1]]]
EDGE_OPTION_TEXT = ["0", "-1", "1", "2", "3", "nan", "inf", "-inf", "1e308", "-1e308", "1e-308", "1e400",
                    "99999999999999999999999", "2000000000", "1.5", "-0.5", "true", "", "abc", "0x10", " 3",
                    "1_0", "\u0663"]
edge_values = st.sampled_from(EDGE_VALUES)
number_text = st.one_of(st.sampled_from(EDGE_OPTION_TEXT),
                        st.integers(-10, 10).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))


@dataclass
class Outcome:
    args: list[str]  # the command line
    exit_code: int | None  # None: it hung
    stdout: str
    stderr: str
    exception: BaseException | None  # an exception that escaped the CLI (a traceback)
    touched: list[str] = field(default_factory=list)  # paths outside the output that changed

    @property
    def kind(self) -> str:
        if self.exit_code is None:
            return "hang"
        errors = [line for line in self.stderr.splitlines() if line.startswith("error:")]
        if self.exception is not None or "Traceback" in self.stderr + self.stdout:
            return "traceback"
        if self.exit_code == 0:
            return "ok"
        return "clean" if self.exit_code in (1, 2) and len(errors) == 1 else "traceback"

    def check(self) -> None:
        """Assert the property: ok or one clean error line; no traceback, hang or stray write."""
        where = " ".join(self.args)
        assert self.kind in ("ok", "clean"), (
            f"{self.kind} for: moeless {where}\nexit {self.exit_code}\nstderr: {self.stderr[-2000:]}\n"
            f"exception: {self.exception!r}")
        assert not self.touched, f"moeless {where} touched {self.touched} outside its output"


class Hang(BaseException):
    """Raised by the alarm in an input that runs past TIMEOUT_S (not an Exception: nothing catches it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Relative path -> (type, size, mtime, inode) of everything under root (symlinks not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            size = info.st_size if not stat.S_ISDIR(info.st_mode) else 0
            found[os.path.relpath(path, root)] = (kind, size, info.st_mtime_ns if kind != stat.S_IFDIR else 0,
                                                  info.st_ino)
    return found


def _touched(before: dict, after: dict, outputs: tuple[str, ...]) -> list[str]:
    """Paths that changed and are neither an output, inside one, nor a new folder made to hold one."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    outputs = tuple(os.path.normpath(o) for o in outputs)

    def allowed(p: str) -> bool:
        inside = any(p == o or p.startswith(o + "/") for o in outputs)
        return inside or (p not in before and any(o.startswith(p + "/") for o in outputs))

    return sorted(p for p in changed if not allowed(p))


@contextmanager
def workspace() -> Iterator[Path]:
    """An empty folder for one input (a user's precious file inside, which must never change)."""
    with tempfile.TemporaryDirectory(prefix="moeless-fuzz-") as root:
        path = Path(root)
        (path / "precious").mkdir()
        (path / "precious" / "notes.txt").write_text("precious\n")
        yield path


def run_cli(group: str, args: list[Any], root: Path, outputs: tuple[str, ...] = ()) -> Outcome:
    """Run `moeless args` in-process with root as the working folder; `outputs` (relative to root)
    may change, nothing else may. Tallies the outcome under `group`."""
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    args = [str(a) for a in args]
    before = snapshot(root)
    cwd = os.getcwd()
    previous = signal.signal(signal.SIGALRM, _alarm)
    os.chdir(root)
    try:
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
        result = CliRunner().invoke(app, args, catch_exceptions=True)
        signal.setitimer(signal.ITIMER_REAL, 0)
        exception = result.exception if not isinstance(result.exception, SystemExit) else None
        outcome = Outcome(args, result.exit_code, result.stdout, result.stderr, exception)
    except Hang:
        outcome = Outcome(args, None, "", "", None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(cwd)
    outcome.touched = _touched(before, snapshot(root), outputs)
    if os.environ.get("MOELESS_FUZZ_LOG"):  # one line per input, to see what the inputs met
        error = next((l for l in outcome.stderr.splitlines() if l.startswith("error:")), "")
        with open(os.environ["MOELESS_FUZZ_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{group}\t{outcome.kind}\t{error[:160]}\n")
    tally = TALLY[group]
    tally["tried"] += 1
    tally[outcome.kind] += 1
    tally["touched"] += bool(outcome.touched)
    return outcome


def _write_tally() -> None:
    target = os.environ.get("MOELESS_FUZZ_TALLY")
    if target and TALLY:
        old = json.loads(Path(target).read_text()) if Path(target).is_file() else {}
        for group, counts in TALLY.items():
            merged = Counter(old.get(group, {}))
            merged.update(counts)
            old[group] = dict(merged)
        Path(target).write_text(json.dumps(old, indent=1, sort_keys=True))


atexit.register(_write_tally)


# ---- mutations of valid documents --------------------------------------------------------------
def json_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and list indices) into a JSON document, the root included."""
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += json_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:8]):  # a few items of long lists are enough
            paths += json_paths(value, prefix + (i,))
    return paths


def mutate_json(data: st.DataObject, doc: Any) -> Any:
    """A copy of doc with one value replaced by an edge value, or one key or item removed."""
    doc = json.loads(json.dumps(doc))
    paths = json_paths(doc)
    path = data.draw(st.sampled_from(paths[1:] or paths), label="path")
    action = data.draw(st.sampled_from(["replace", "replace", "delete"]), label="action")
    if not path:
        return data.draw(edge_values)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(edge_values, label="value")
    return doc


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """The file cut short, or a byte range overwritten with junk."""
    if data.draw(st.booleans(), label="truncate"):
        return raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")]
    start = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="start")
    junk = data.draw(st.binary(min_size=1, max_size=16), label="junk")
    return raw[:start] + junk + raw[start + len(junk):]


def dumps(doc: Any) -> bytes:
    """JSON as a user's tool may write it: NaN and Infinity literals included."""
    return json.dumps(doc, allow_nan=True).encode()
