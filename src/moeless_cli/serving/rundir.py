"""The dist backend's run directory: what the launcher and the rank processes of one node share.

One directory per `serve --backend dist` run on each node (the launcher's temp dir). Attempt k is
the k-th start of the torchrun group (k > 0 after a recovery). Files, `r` a local rank:
- `hb.a<k>.r<r>`: heartbeat: the rank's "pid rank phase" (phase: loading, then serving), its mtime
  touched every HEARTBEAT_EVERY_S; removed on a clean exit, so a present, stale file is a stopped
  or dead rank. While loading, a rank may hold the GIL in long native calls (reading or writing
  weights), so the launcher gives it STARTUP_TIMEOUT_S before the heartbeat timeout applies.
- `user-error.a<k>.r<r>` (a MoelessError: the user's input) and `crash.a<k>.r<r>` (any other
  exception), `terminated.a<k>.r<r>` (torchrun's SIGTERM): how a rank that did not die silently ended.
- `journal.a<k>.r<r>.jsonl`: one line per request the rank finished (timing and token ids), so a
  restarted group skips them and the launcher can account for every request after a failure.
- `facts.json`: the model and workload summary local rank 0 writes at the first start (the
  launcher's accounted report and its can-the-survivors-hold-it check read it).
- `ready.a<k>`: wall time when attempt k started serving (recovery seconds end there).
- `experts.safetensors`: the node's host weight store (every expert, fused layout, mmap-shared).
- `report.json`, `report.json.layer_records`: local rank 0's report.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEARTBEAT_EVERY_S = 0.5  # how often a rank touches its heartbeat file
STARTUP_TIMEOUT_S = 900.0  # heartbeat silence allowed while a rank loads (before it serves)


@dataclass(frozen=True)
class RunDir:
    root: Path  # the node's run directory

    def heartbeat(self, attempt: int, local_rank: int) -> Path:
        return self.root / f"hb.a{attempt}.r{local_rank}"

    def user_error(self, attempt: int, local_rank: int) -> Path:
        return self.root / f"user-error.a{attempt}.r{local_rank}"

    def crash(self, attempt: int, local_rank: int) -> Path:
        return self.root / f"crash.a{attempt}.r{local_rank}"

    def terminated(self, attempt: int, local_rank: int) -> Path:
        return self.root / f"terminated.a{attempt}.r{local_rank}"

    def journal(self, attempt: int, local_rank: int) -> Path:
        return self.root / f"journal.a{attempt}.r{local_rank}.jsonl"

    def ready(self, attempt: int) -> Path:
        return self.root / f"ready.a{attempt}"

    @property
    def facts(self) -> Path:
        return self.root / "facts.json"

    @property
    def store(self) -> Path:
        return self.root / "experts.safetensors"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


class Heartbeat:
    """A daemon thread touching the rank's heartbeat file; a stopped process (SIGSTOP) stops it too."""

    def __init__(self, path: Path, rank: int):
        self.path = path  # the heartbeat file
        self.rank = rank  # global rank
        self._write("loading")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="moeless-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _write(self, phase: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(f"{os.getpid()} {self.rank} {phase}\n")
        os.replace(tmp, self.path)

    def serving(self) -> None:
        """Loading is over: from now on the launcher's heartbeat timeout applies."""
        self._write("serving")

    def finish(self) -> None:
        """A clean exit: stop beating and remove the file (the launcher stops watching this rank)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass(frozen=True)
class Beat:
    pid: int  # the rank's process id
    rank: int  # its global rank
    serving: bool  # loading is over
    age_s: float  # seconds since its last beat


def read_heartbeat(path: Path) -> Beat | None:
    """A heartbeat file's state, None when absent (or being replaced)."""
    try:
        pid, rank, phase = path.read_text().split()
        return Beat(int(pid), int(rank), phase == "serving", time.time() - path.stat().st_mtime)
    except (OSError, ValueError):
        return None


def append_done(path: Path, timing: Any, outputs: list[int]) -> None:
    """Journal one finished request (online.batching.RequestTiming) and its generated token ids."""
    line = {"id": timing.request.id, "prefilled": timing.prefilled, "generated": timing.generated,
            "first_token_s": timing.first_token_s, "finish_s": timing.finish_s, "outputs": outputs}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def read_done(root: Path) -> dict[int, dict[str, Any]]:
    """Every request any rank of any attempt journalled as finished: request id -> its line.
    A line cut short by a killed process is skipped (that rank's peers journalled it too)."""
    done: dict[int, dict[str, Any]] = {}
    for path in sorted(root.glob("journal.*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
                done[int(line["id"])] = line
            except (ValueError, KeyError, TypeError):
                continue
    return done
