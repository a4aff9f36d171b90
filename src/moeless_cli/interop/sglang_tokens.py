"""SGLang `per_token` dumps: per-token top-k expert ids become the profile's per-token routing.

Each record's `topk_ids_of_layer [decoder layers, tokens, 8]` holds physical slot ids (-1 where
unused: columns past the model's top-k, dense layers, padding); they are folded to logical experts
through the file's `last_physical_to_logical_map`. Records that several ranks wrote identically
(the same tokens seen by every tensor-parallel rank) are kept once. A token with -1 in one of its
first k columns of some MoE layer is dropped (counted in the import's notes). SGLang's dump has no
request ids: `token_request` numbers the sequences of each pass (from `extend_seq_lens` in
prefill, one per token in decode), so a request's prompt chunks keep together within a pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.interop.records import EngineLoads, array_field
from moeless_cli.interop.sglang import DECODE_MODE, engine_loads, record_pass_id, select_used


def _int_list(rec: dict[str, Any], key: str, size: int, where: str) -> np.ndarray:
    value = rec.get(key)
    try:
        array = np.asarray(value, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise MoelessError(f"{where}.{key} must be a list of integers") from None
    if array.size != size:
        raise MoelessError(f"{where}.{key} has {array.size} entries for {size} tokens")
    return array


def _segments(rec: dict[str, Any], num_tokens: int, decode: bool) -> np.ndarray:
    """Sequence index of each token within its pass: [tokens]. Prefill sequences come from
    extend_seq_lens when it is a list of lengths adding up to the pass's tokens, else one sequence."""
    lens = rec.get("extend_seq_lens")
    if decode:
        return np.arange(num_tokens)
    valid = isinstance(lens, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= num_tokens for x in lens)
    if not valid or sum(lens) != num_tokens:
        return np.zeros(num_tokens, dtype=np.int64)
    return np.repeat(np.arange(len(lens)), lens)


def _record_tokens(rec: dict[str, Any], phy2log: np.ndarray, where: str) -> dict[str, Any]:
    """One record's tokens: logical ids [decoder layers, tokens, width] (-1 unused) and bookkeeping."""
    ids = array_field(rec, "topk_ids_of_layer", where, (3,), "[layers, tokens, k]", integer=True).astype(np.int64)
    if ids.shape[0] != phy2log.shape[0]:
        raise MoelessError(f"{where}.topk_ids_of_layer has {ids.shape[0]} layers, the map {phy2log.shape[0]}")
    if ids.size and ids.max() >= phy2log.shape[1]:
        raise MoelessError(f"{where}.topk_ids_of_layer has slot id {int(ids.max())} >= {phy2log.shape[1]} slots")
    rows = np.arange(ids.shape[0])[:, None, None]
    logical = np.where(ids >= 0, phy2log[rows, np.maximum(ids, 0)], -1)
    num_tokens = ids.shape[1]
    decode = rec.get("forward_mode") == DECODE_MODE
    return {"logical": logical, "decode": decode, "segments": _segments(rec, num_tokens, decode),
            "input_ids": _int_list(rec, "input_ids", num_tokens, where),
            "positions": _int_list(rec, "positions", num_tokens, where)}


def _collect(paths: list[Path], records: list[dict[str, Any]], maps: list[np.ndarray]) -> list[list[dict]]:
    """Per pass (sorted by forward_pass_id), its distinct records' tokens."""
    by_pass: dict[int, list[dict]] = {}
    seen: set[tuple[int, bytes, bytes]] = set()
    for path, record, phy2log in zip(paths, records, maps):
        for i, rec in enumerate(record["records"]):
            pass_id = record_pass_id(rec, path, i)
            tokens = _record_tokens(rec, phy2log, f"{path}: records[{i}]")
            key = (pass_id, tokens["input_ids"].tobytes(), tokens["logical"].tobytes())
            if key not in seen:
                seen.add(key)
                by_pass.setdefault(pass_id, []).append(tokens)
    return [by_pass[k] for k in sorted(by_pass)]


def _flatten(passes: list[list[dict]]) -> dict[str, np.ndarray]:
    """Concatenate every token of every pass: logical [decoder layers, T, width] and per-token arrays."""
    keys = ("logical", "iteration", "phase", "request", "position", "ids")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    next_request = 0
    for index, records in enumerate(passes):
        for tokens in records:
            count = tokens["input_ids"].size
            parts["logical"].append(tokens["logical"])
            parts["iteration"].append(np.full(count, index))
            parts["phase"].append(np.full(count, int(tokens["decode"])))
            parts["request"].append(tokens["segments"] + next_request)
            parts["position"].append(tokens["positions"])
            parts["ids"].append(tokens["input_ids"])
            next_request += int(tokens["segments"].max(initial=-1)) + 1
    out = {k: np.concatenate(v, axis=1 if k == "logical" else 0) for k, v in parts.items() if k != "logical"}
    out["logical"] = np.concatenate(parts["logical"], axis=1)
    return out


def read_tokens(paths: list[Path], records: list[dict[str, Any]], maps: list[np.ndarray],
                num_experts: int) -> EngineLoads:
    """`per_token` dumps -> per-pass loads and per-token routing over the MoE layers."""
    passes = _collect(paths, records, maps)
    if not passes or sum(t["input_ids"].size for p in passes for t in p) == 0:
        raise MoelessError(f"{paths[0]}: no recorded tokens (the buffer is empty)")
    flat = _flatten(passes)
    logical = flat["logical"]  # [decoder layers, T, width]
    valid = logical >= 0
    routed = valid.any(axis=(1, 2))  # [decoder layers]
    top_k = int(valid[routed].any(axis=(0, 1)).sum()) if routed.any() else 0
    keep = valid[routed][:, :, :top_k].all(axis=(0, 2))  # [T] complete in every MoE layer
    topk = logical[routed][:, keep, :top_k].transpose(1, 0, 2)  # [T kept, MoE layers, k]
    iteration = flat["iteration"][keep]
    counts = np.zeros((len(passes), logical.shape[0], num_experts))
    rows = np.flatnonzero(routed)
    for j, row in enumerate(rows):
        np.add.at(counts, (iteration[:, None], row, topk[:, j]), 1.0)
    phase = np.array([int(p[0]["decode"]) for p in passes], dtype=np.uint8)
    result = engine_loads("sglang-per-token", counts, str(paths[0]), phase)
    renumber = np.full(len(passes), -1)
    renumber[select_used(counts)] = np.arange(result.load.shape[0])
    result.routing = {
        "topk_ids": topk.astype(np.uint8 if num_experts <= 256 else np.int16),
        "token_request": flat["request"][keep].astype(np.int32),
        "token_phase": flat["phase"][keep].astype(np.uint8),
        "token_iteration": renumber[iteration].astype(np.int32),
        "token_position": flat["position"][keep].astype(np.int32),
        "token_ids": flat["ids"][keep].astype(np.int32),
    }
    result.top_k = top_k
    dropped = int((~keep).sum())
    if dropped:
        result.notes.append(f"dropped {dropped} token(s) of {keep.size} with unused (-1) expert ids")
    return result

