"""Request arrival traces: when each request arrives and how many tokens it reads and writes.

Built-in traces ship in `moeless_cli/data/traces/` with their licenses (see each SOURCE.md):
  azure-conv, azure-code                      Azure LLM inference trace 2023 (Splitwise), CC-BY 4.0
  mooncake-conversation, mooncake-synthetic   Mooncake FAST'25 traces, Apache-2.0

Any CSV or JSONL with an arrival time and input/output token counts works too; the column names of
the built-in formats and a few common ones are recognised (see TIMESTAMP_COLUMNS etc.).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path

import numpy as np

from moeless_cli.checks import MAX_COUNT, MAX_SECONDS, MAX_TIMESTAMP, MAX_TOKENS, integer, number, optional_integer, shown
from moeless_cli.errors import MoelessError
from moeless_cli.fileio import check_name_lengths


@dataclass(frozen=True)
class Trace:
    name: str  # built-in name or file path
    arrival_s: np.ndarray  # [requests] float64, seconds since the first arrival, non-decreasing
    input_tokens: np.ndarray  # [requests] int64, prompt length in tokens
    output_tokens: np.ndarray  # [requests] int64, tokens the request generates

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


# name -> (file under data/traces, description)
BUILTIN_TRACES: dict[str, tuple[str, str]] = {
    "azure-conv": ("azure-llm-2023/AzureLLMInferenceTrace_conv.csv",
                   "Azure LLM inference 2023, conversation service (19,366 requests, ~1 h)"),
    "azure-code": ("azure-llm-2023/AzureLLMInferenceTrace_code.csv",
                   "Azure LLM inference 2023, code completion service (8,819 requests, ~1 h)"),
    "mooncake-conversation": ("mooncake/conversation_trace.csv",
                              "Mooncake (Kimi) conversation trace, real arrivals (12,031 requests, ~59 min)"),
    "mooncake-synthetic": ("mooncake/synthetic_trace.csv",
                           "Mooncake synthetic trace, Poisson arrivals (3,993 requests, ~17 min)"),
}

# Recognised column names, in order of preference. A name ending in _ms is in milliseconds.
TIMESTAMP_COLUMNS = ("timestamp", "TIMESTAMP", "timestamp_s", "timestamp_ms", "arrival_time", "arrival_s")
INPUT_COLUMNS = ("input_tokens", "ContextTokens", "input_length", "prompt_tokens", "input_len")
OUTPUT_COLUMNS = ("output_tokens", "GeneratedTokens", "output_length", "completion_tokens", "output_len")


def builtin_trace_path(name: str) -> Path:
    relative, _ = BUILTIN_TRACES[name]
    return Path(str(files("moeless_cli") / "data" / "traces" / relative))


def load_trace(name_or_path: str | Path, time_scale: float = 1.0, max_requests: int | None = None) -> Trace:
    """Load a built-in trace by name, or a CSV/JSONL trace file.

    time_scale > 1 compresses time (arrivals come `time_scale` times faster); max_requests keeps
    the first requests in arrival order. Every arrival time and token count is checked: finite,
    non-negative counts up to MAX_TOKENS, and a trace that spans at most MAX_SECONDS once scaled.
    """
    time_scale = number("--time-scale", time_scale, high=None, positive=True)
    max_requests = optional_integer("--max-requests", max_requests, 1, MAX_COUNT)
    name = str(name_or_path)
    path = builtin_trace_path(name) if name in BUILTIN_TRACES else Path(name)
    check_name_lengths(path, "trace")
    if not path.is_file():
        raise MoelessError(
            f"trace not found: {name} (built-in traces: {', '.join(BUILTIN_TRACES)}; or give a CSV/JSONL path)"
        )
    rows = _read_rows(path)
    if not rows:
        raise MoelessError(f"trace {name} has no requests")
    header = list(rows[0].keys())
    ts_col = _pick(header, TIMESTAMP_COLUMNS, "arrival time", path)
    in_col = _pick(header, INPUT_COLUMNS, "input token count", path)
    out_col = _pick(header, OUTPUT_COLUMNS, "output token count", path)
    unit = 1e-3 if ts_col.endswith("_ms") or (path.suffix == ".jsonl" and ts_col == "timestamp") else 1.0
    arrival, inputs, outputs = _columns(rows, path, (ts_col, in_col, out_col))
    order = np.argsort(arrival, kind="stable")
    arrival, inputs, outputs = arrival[order] * unit, inputs[order], outputs[order]
    arrival = (arrival - arrival[0]) / time_scale
    if max_requests is not None:
        arrival, inputs, outputs = arrival[:max_requests], inputs[:max_requests], outputs[:max_requests]
    if not np.isfinite(arrival[-1]) or arrival[-1] > MAX_SECONDS:
        raise MoelessError(f"trace {name} spans {arrival[-1]:.3g} s at --time-scale {time_scale:g}; at most "
                           f"{MAX_SECONDS:.0f} s (31 days) can be replayed: check its arrival times or raise --time-scale")
    return Trace(name=name, arrival_s=arrival, input_tokens=inputs, output_tokens=outputs)


def _columns(rows: list[dict], path: Path, columns: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times [requests] float64 and input/output token counts [requests] int64, each checked."""
    ts_col, in_col, out_col = columns
    arrival = np.empty(len(rows), dtype=np.float64)
    inputs = np.empty(len(rows), dtype=np.int64)
    outputs = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        where = f"{path}: request {i + 1}"
        missing = [c for c in columns if row.get(c) is None]
        if missing:
            raise MoelessError(f"{where} has no {', '.join(missing)} (every request needs {', '.join(columns)})")
        arrival[i] = _parse_time(row[ts_col], where)
        inputs[i] = _parse_count(row[in_col], where, in_col)
        outputs[i] = _parse_count(row[out_col], where, out_col)
    return arrival, inputs, outputs


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel's byte-order mark
    except UnicodeDecodeError:
        raise MoelessError(f"trace {path} is not UTF-8 text") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise MoelessError(f"{path}: line {line_number} is not valid JSON") from None
            if not isinstance(row, dict):
                raise MoelessError(f"{path}: line {line_number} is not a JSON object (one request per line)")
            rows.append(row)
        return rows
    try:
        return list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise MoelessError(f"{path}: malformed CSV: {exc}") from None


def _pick(header: list[str], candidates: tuple[str, ...], what: str, path: Path) -> str:
    for column in candidates:
        if column in header:
            return column
    found = ", ".join(str(h) for h in header)
    raise MoelessError(
        f"{path}: no {what} column; expected one of {', '.join(candidates)} (found: {shown(found, 200)})"
    )


def _parse_time(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MoelessError(f"{where}: arrival time must be a number or an ISO date-time, got {shown(value)}")
    text = str(value).strip()
    try:
        seconds = float(value) if not isinstance(value, str) else float(text)
    except (ValueError, OverflowError):
        try:
            seconds = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError, OSError):
            raise MoelessError(f"{where}: cannot read arrival time {shown(text)} (seconds or an ISO date-time)") from None
    return number(f"{where}: arrival time", seconds, -MAX_TIMESTAMP, MAX_TIMESTAMP)


def _parse_count(value: object, where: str, column: str) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise MoelessError(f"{where}: {column} must be a token count, got {shown(value)}") from None
    return integer(f"{where}: {column}", value, 0, MAX_TOKENS)
