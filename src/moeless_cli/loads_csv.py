"""Read expert-load counts recorded elsewhere: a CSV with columns `layer,expert,count`.

Extra columns are allowed and can filter rows (`where={"corpus": "code"}`); rows that share a
(layer, expert) after filtering are summed. Used by `moeless profile import` and `moeless plan --loads`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from moeless_cli.checks import MAX_EXPERTS, MAX_FLOAT, MAX_LAYERS, fits_in_memory
from moeless_cli.errors import MoelessError
from moeless_cli.fileio import check_name_lengths

REQUIRED_COLUMNS = ("layer", "expert", "count")


def parse_where(clauses: list[str] | None) -> dict[str, str]:
    """Turn `["corpus=code", "shape=1x512"]` into a filter dict, rejecting malformed clauses."""
    where: dict[str, str] = {}
    for clause in clauses or []:
        column, sep, value = clause.partition("=")
        if not sep or not column.strip():
            raise MoelessError(f"--where expects COLUMN=VALUE, got {clause!r}")
        where[column.strip()] = value.strip()
    return where


def read_loads_csv(path: str | Path, where: dict[str, str] | None = None) -> np.ndarray:
    """Read a load CSV into a dense matrix.

    Returns:
        load: [layers, experts] float64, token-to-expert assignment counts. Layers and experts are
        numbered 0..max as they appear; missing (layer, expert) pairs count 0.
    """
    path = Path(path)
    where = where or {}
    check_name_lengths(path, "loads CSV")
    if not path.is_file():
        raise MoelessError(f"loads CSV not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise MoelessError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected a header with "
                    f"layer,expert,count (found: {', '.join(header) or 'no header'})"
                )
            unknown = [c for c in where if c not in header]
            if unknown:
                raise MoelessError(
                    f"--where column(s) {', '.join(unknown)} not in {path} (columns: {', '.join(header)})"
                )
            entries = _read_rows(path, reader, where)
    except UnicodeDecodeError:
        raise MoelessError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise MoelessError(f"{path}: malformed CSV: {exc}") from None
    if not entries:
        filt = f" matching {where}" if where else ""
        raise MoelessError(f"{path}: no load rows{filt}")
    num_layers = 1 + max(layer for layer, _ in entries)
    num_experts = 1 + max(expert for _, expert in entries)
    fits_in_memory(f"{path}: the load matrix", (num_layers, num_experts))
    load = np.zeros((num_layers, num_experts), dtype=np.float64)  # [layers, experts]
    for (layer, expert), count in entries.items():
        load[layer, expert] = count
    return load


def _read_rows(path: Path, reader: csv.DictReader, where: dict[str, str]) -> dict[tuple[int, int], float]:
    """(layer, expert) -> summed count over the rows that pass `where`; every number checked."""
    entries: dict[tuple[int, int], float] = {}
    for row_number, row in enumerate(reader, start=2):  # line 1 is the header
        if any(row.get(c) != v for c, v in where.items()):
            continue
        try:
            layer, expert = int(row["layer"]), int(row["expert"])
            count = float(row["count"])
        except (TypeError, ValueError):
            raise MoelessError(
                f"{path}: line {row_number}: layer and expert must be integers and count a "
                f"number (got layer={row.get('layer')!r}, expert={row.get('expert')!r}, "
                f"count={row.get('count')!r})"
            ) from None
        if not 0 <= layer < MAX_LAYERS or not 0 <= expert < MAX_EXPERTS:
            raise MoelessError(f"{path}: line {row_number}: layer must be in [0, {MAX_LAYERS}) and expert in "
                               f"[0, {MAX_EXPERTS}) (got layer={layer}, expert={expert})")
        if not np.isfinite(count) or not 0 <= count <= MAX_FLOAT:
            raise MoelessError(f"{path}: line {row_number}: count must be a finite non-negative number up to "
                               f"{MAX_FLOAT:g}, got {row.get('count')!r}")
        entries[(layer, expert)] = entries.get((layer, expert), 0.0) + count
    return entries
