"""Small engine records built the way SGLang and vLLM write them (INTEROP.md), and the engines'
own derivation rules for reading a slot map back. Shared by the tests/test_interop_*.py files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
import torch


def sglang_stat_dump(path: Path, passes: np.ndarray, buffer: int | None = None) -> Path:
    """torch.save({"rank", "logical_count", ...}) as SGLang's `stat` recorder writes it.

    passes: [recorded passes, decoder layers, E]; the buffer is padded with zero rows to `buffer`."""
    buffer = buffer or passes.shape[0]
    counts = np.zeros((buffer, *passes.shape[1:]), dtype=np.int32)
    counts[: passes.shape[0]] = passes
    torch.save({"rank": 0, "logical_count": torch.from_numpy(counts),
                "average_utilization_rate_over_window": None}, path)
    return path


def sglang_detail_dump(path: Path, records: list[dict], phy2log: np.ndarray) -> Path:
    """torch.save({"records", "last_physical_to_logical_map"}) as a `per_pass`/`per_token` rank writes it."""
    torch.save({"records": records, "last_physical_to_logical_map": torch.from_numpy(phy2log.astype(np.int64))}, path)
    return path


def vllm_window(path: Path, window: np.ndarray, phy2log: np.ndarray, step: int | None = None) -> Path:
    """A saved EplbModelState window: expert_load_window [W, layers, P] + physical_to_logical_map."""
    arrays = {"expert_load_window": window.astype(np.int32), "physical_to_logical_map": phy2log.astype(np.int64)}
    if step is not None:
        arrays["expert_load_window_step"] = np.array(step)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, path)
    return path


def logical_to_all_physical(row: list[int], num_experts: int) -> list[list[int]]:
    """SGLang's derivation for one layer: each logical expert's slots, ascending."""
    slots: list[list[int]] = [[] for _ in range(num_experts)]
    for p, e in enumerate(row):
        slots[e].append(p)
    return slots


def placement(row: list[int], num_experts: int, ep_size: int) -> list[list[int]]:
    """(expert -> sorted ranks of its replicas) as the engine derives it: slot p on rank p // (P / ep)."""
    per_rank = len(row) // ep_size
    return [sorted(p // per_rank for p in slots) for slots in logical_to_all_physical(row, num_experts)]


def plan_and_export(cli: Callable[..., Any], profile: Path, plan_file: Path, gpus: int, fmt: str,
                    solver: str = "even-split") -> dict:
    """`moeless plan --profile` (a solver with equal shares, as engines dispatch), then `plan export`.

    Returns the export's --json summary; the document is next to the plan (PLAN.<fmt>.json)."""
    result = cli("plan", "--profile", profile, "--gpus", gpus, "--solver", solver, "--out", plan_file, "--json")
    assert result.exit_code == 0, result.output
    result = cli("plan", "export", plan_file, "--format", fmt, "--json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)
