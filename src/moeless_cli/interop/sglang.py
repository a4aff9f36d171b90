"""SGLang: read its expert-distribution recorder dumps; write `--init-expert-location` documents.

Dumps (docs/interop.md, INTEROP.md section 2), all torch.save'd dicts:
- `stat` / `stat_approx`: one file, `logical_count [passes, decoder layers, E]`, a circular buffer
  whose unused rows are all zero (after a wrap its rows are not in time order);
- `per_pass` / `per_token`: one file per rank, `records` (each with `forward_pass_id` and
  `global_physical_count [decoder layers, P]`; per_token adds `topk_ids_of_layer [layers, tokens, 8]`
  physical ids with -1 for unused entries, `input_ids`, `positions`, `extend_seq_lens`,
  `forward_mode`) and `last_physical_to_logical_map [decoder layers, P]`.
SGLang's rows are all decoder layers; rows nobody was routed to are dense layers and are dropped
(MoE layer i keeps its decoder-layer id in `moe_layer_ids`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.interop.records import EngineLoads, array_field, check_map, fold_to_logical
from moeless_cli.plan_io import decoder_rows

DECODE_MODE = 2  # SGLang ForwardMode.DECODE (EXTEND = 1, MIXED = 3, IDLE = 4, ...)


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(parts)


def select_used(counts: np.ndarray) -> np.ndarray:
    """counts: [passes, layers, E]. Indices of the passes that routed any token."""
    return np.flatnonzero(counts.reshape(counts.shape[0], -1).sum(axis=1) > 0)


def select_rows(passes: np.ndarray, path: str) -> tuple[np.ndarray, list[int], list[int]]:
    """passes: [passes, decoder layers, E] counts. Returns (indices of non-empty passes, MoE rows,
    dense rows): empty buffer rows and never-routed (dense) layers are left out."""
    if passes.size and passes.min() < 0:
        raise MoelessError(f"{path}: counts must be non-negative")
    used = select_used(passes)
    if used.size == 0:
        raise MoelessError(f"{path}: the buffer is empty (no recorded pass routed any token; record "
                           "traffic between /start_expert_distribution_record and the dump)")
    routed = passes[used].sum(axis=(0, 2)) > 0  # [decoder layers]
    return used, np.flatnonzero(routed).tolist(), np.flatnonzero(~routed).tolist()


def engine_loads(fmt: str, passes: np.ndarray, path: str, phase: np.ndarray | None = None) -> EngineLoads:
    """passes: [passes, decoder layers, E]; phase: [passes] or None (unknown)."""
    used, moe, dense = select_rows(passes, path)
    result = EngineLoads(fmt, passes[used][:, moe].astype(np.float64), moe, passes.shape[1], dense,
                         samples_in_file=passes.shape[0],
                         iteration_phase=None if phase is None else phase[used].astype(np.uint8))
    if dense:
        result.notes.append(f"dropped {len(dense)} dense layer row(s) of {passes.shape[1]}: {_ranges(dense)}")
    if used.size < passes.shape[0]:
        result.notes.append(f"skipped {passes.shape[0] - used.size} empty pass row(s) of {passes.shape[0]}")
    return result


def read_stat(path: Path, record: dict[str, Any]) -> EngineLoads:
    """A `stat` / `stat_approx` dump (or an init-expert-location logical_count file)."""
    counts = array_field(record, "logical_count", path, (2, 3), "[passes, layers, experts]")
    passes = counts[None] if counts.ndim == 2 else counts
    result = engine_loads("sglang-stat", passes, str(path))
    if result.samples_in_file == result.load.shape[0] and passes.shape[0] > 1:
        result.notes.append("the buffer is full: after a wrap its rows are not in time order")
    return result


def _detail_map(path: Path, record: dict[str, Any], shape: tuple[int, ...] | None) -> np.ndarray:
    phy2log = array_field(record, "last_physical_to_logical_map", path, (2,), "[layers, P]", integer=True)
    check_map(phy2log, path, "last_physical_to_logical_map")
    if shape is not None and phy2log.shape != shape:
        raise MoelessError(f"{path}: last_physical_to_logical_map has shape {list(phy2log.shape)}, the first "
                           f"file's has {list(shape)} (files from different runs or model sizes?)")
    if not isinstance(record.get("records"), list):
        raise MoelessError(f"{path}: 'records' must be a list of per-pass dicts")
    return phy2log.astype(np.int64)


def record_pass_id(rec: Any, path: Path, i: int) -> int:
    if not isinstance(rec, dict) or isinstance(rec.get("forward_pass_id"), bool) \
            or not isinstance(rec.get("forward_pass_id"), int):
        raise MoelessError(f"{path}: records[{i}] must be a dict with an integer forward_pass_id")
    return int(rec["forward_pass_id"])


def detail_maps(paths: list[Path], records: list[dict[str, Any]],
                num_experts: int | None) -> tuple[list[np.ndarray], int]:
    """`per_pass` / `per_token` dumps, one file per rank: each file's physical-to-logical map
    ([layers, P]) and the logical expert count."""
    maps = []
    for path, record in zip(paths, records):
        maps.append(_detail_map(path, record, maps[0].shape if maps else None))
    experts = max(int(m.max()) + 1 for m in maps) if num_experts is None else num_experts
    for path, phy2log in zip(paths, maps):
        check_map(phy2log, path, "last_physical_to_logical_map", experts)
    return maps, experts


def has_token_ids(records: list[dict[str, Any]]) -> bool:
    """A `per_token` dump (per-token top-k ids) rather than a `per_pass` one."""
    return any("topk_ids_of_layer" in rec for record in records for rec in record["records"] if isinstance(rec, dict))


def read_per_pass(paths: list[Path], records: list[dict[str, Any]], maps: list[np.ndarray],
                  experts: int) -> EngineLoads:
    """`per_pass` dumps: counts folded to logical experts and summed over ranks by pass id."""
    by_pass: dict[int, np.ndarray] = {}
    for path, record, phy2log in zip(paths, records, maps):
        for i, rec in enumerate(record["records"]):
            pass_id = record_pass_id(rec, path, i)
            count = array_field(rec, "global_physical_count", f"{path}: records[{i}]", (2,), "[layers, P]")
            if count.shape != phy2log.shape:
                raise MoelessError(f"{path}: records[{i}].global_physical_count has shape {list(count.shape)}, "
                                   f"the map {list(phy2log.shape)}")
            logical = fold_to_logical(count, phy2log, experts)
            by_pass[pass_id] = by_pass.get(pass_id, 0) + logical
    if not by_pass:
        raise MoelessError(f"{paths[0]}: no records (the buffer is empty)")
    passes = np.stack([by_pass[k] for k in sorted(by_pass)])  # [passes, layers, E]
    result = engine_loads("sglang-per-pass", passes, str(paths[0]))
    if len(paths) > 1:
        result.notes.append(f"summed {len(paths)} rank files by forward_pass_id")
    return result


def logical_count_document(load: np.ndarray, moe_layer_ids: list[int] | None, dense_layers: int | None,
                           engine_rows: int | None) -> dict[str, Any]:
    """`--init-expert-location` Form B: {"logical_count": [decoder layers, E]} from load
    [MoE layers, E], dense layers as zero rows (SGLang then runs its own EPLB on these counts)."""
    integral = bool(np.all(load == np.round(load)))
    moe_rows = (np.round(load).astype(np.int64) if integral else load).tolist()
    zero = [0] * load.shape[1]
    return {"logical_count": decoder_rows(moe_rows, zero, moe_layer_ids, dense_layers, engine_rows)}
