"""vLLM: read an EPLB load window a user (or moeless's vLLM policy) saved.

Upstream vLLM writes no load file (INTEROP.md section 3); the window is the state of
`EplbModelState`, saved by hand or by `moeless_cli.integrations.vllm` (MOELESS_VLLM_RECORD_DIR):
- `expert_load_window [W, MoE layers, P]` physical-slot counts with `physical_to_logical_map
  [MoE layers, P]` (optional `expert_load_window_step`: the next row vLLM would write, so the
  rows are put oldest first), from torch.save or .npz; or
- `load_window_cpu [samples, MoE layers, E]`, already logical (vLLM's newer policy context, and
  what moeless's policy records).
Rows are vLLM's: MoE layers only. All-zero samples (unused window rows, dummy steps) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.checks import integer
from moeless_cli.errors import MoelessError
from moeless_cli.interop.records import EngineLoads, array_field, check_map, fold_to_logical, to_numpy
from moeless_cli.interop.sglang import select_used


def _window_step(record: dict[str, Any], path: Path, size: int) -> int | None:
    if record.get("expert_load_window_step") is None:
        return None
    try:
        value = to_numpy(record["expert_load_window_step"]).reshape(-1)
    except (TypeError, ValueError):
        raise MoelessError(f"{path}: expert_load_window_step must be an integer") from None
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise MoelessError(f"{path}: expert_load_window_step must be one integer")
    step = integer(f"{path}: expert_load_window_step", value[0].item())
    if not 0 <= step < max(size, 1):
        raise MoelessError(f"{path}: expert_load_window_step {step} is outside the window of {size} rows")
    return step


def _physical_window(path: Path, record: dict[str, Any], num_experts: int | None) -> tuple[np.ndarray, list[str]]:
    """expert_load_window folded to logical: [W, layers, E] oldest first, and notes."""
    window = array_field(record, "expert_load_window", path, (3,), "[window, MoE layers, physical experts]")
    if "physical_to_logical_map" not in record:
        raise MoelessError(f"{path}: no 'physical_to_logical_map' to fold expert_load_window with (save "
                           "EplbModelState.physical_to_logical_map beside the window)")
    phy2log = array_field(record, "physical_to_logical_map", path, (2,), "[MoE layers, physical experts]", integer=True)
    if window.shape[1:] != phy2log.shape:
        raise MoelessError(f"{path}: expert_load_window has shape {list(window.shape)} but physical_to_logical_map "
                           f"{list(phy2log.shape)}; expected [W, layers, P] and [layers, P]")
    experts = num_experts if num_experts is not None else int(phy2log.max(initial=-1)) + 1
    check_map(phy2log, path, "physical_to_logical_map", experts)
    step = _window_step(record, path, window.shape[0])
    notes = []
    if step is None:
        notes.append("no expert_load_window_step: window rows kept in buffer order")
    else:
        window = np.roll(window, -step, axis=0)  # row `step` is the oldest
    return fold_to_logical(window, phy2log.astype(np.int64), experts), notes


def read_window(path: Path, record: dict[str, Any], num_experts: int | None) -> EngineLoads:
    """A saved vLLM load window -> per-sample logical loads over the MoE layers."""
    notes: list[str] = []
    if "load_window_cpu" in record:
        logical = array_field(record, "load_window_cpu", path, (2, 3), "[samples, MoE layers, experts]")
        logical = logical[None] if logical.ndim == 2 else logical
        if num_experts is not None and logical.shape[-1] != num_experts:
            raise MoelessError(f"{path}: load_window_cpu has {logical.shape[-1]} experts, --num-experts says "
                               f"{num_experts} (a window from another model size?)")
    else:
        logical, notes = _physical_window(path, record, num_experts)
    if logical.size and logical.min() < 0:
        raise MoelessError(f"{path}: load counts must be non-negative")
    used = select_used(logical)
    if used.size == 0:
        raise MoelessError(f"{path}: the load window is empty (every sample is zero)")
    layers = logical.shape[1]
    result = EngineLoads("vllm-window", logical[used].astype(np.float64), list(range(layers)), layers,
                         samples_in_file=logical.shape[0], notes=notes)
    if used.size < logical.shape[0]:
        result.notes.append(f"skipped {logical.shape[0] - used.size} empty window row(s) of {logical.shape[0]}")
    result.notes.append("vLLM rows are MoE layers only; for SGLang give `plan export --dense-layers K`")
    return result
