"""Reading engine record files (torch.save'd dicts, .npz, .json) into numpy, with one-line errors.

Torch is imported only to read a `.pt` file, and then with `weights_only=True` (no code runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError

TORCH_SUFFIXES = (".pt", ".pth")


@dataclass
class EngineLoads:
    """Loads read from an engine's record, MoE layers only, ready to become a profile."""

    fmt: str  # sglang-stat, sglang-per-pass, sglang-per-token or vllm-window
    load: np.ndarray  # [iterations, layers, experts] float64, one row per pass / window sample
    moe_layer_ids: list[int]  # the engine's row index of each MoE layer (SGLang: decoder layer)
    engine_rows: int  # rows on the engine's own layer axis (SGLang: all decoder layers)
    dense_rows: list[int] = field(default_factory=list)  # engine rows dropped as dense (never routed)
    samples_in_file: int = 0  # passes / window rows in the file(s), empty ones included
    iteration_phase: np.ndarray | None = None  # [iterations] uint8 0 prefill (or unknown), 1 decode
    routing: dict[str, np.ndarray] | None = None  # per-token profile arrays (topk_ids, token_*), or None
    top_k: int | None = None  # experts per token, when the record shows it
    notes: list[str] = field(default_factory=list)  # what the user should know about this import


def _load_torch(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: corrupt, truncated, not a torch file, unsafe
        message = " ".join(str(exc).split())[:160]
        raise MoelessError(f"{path}: not a readable torch file ({type(exc).__name__}: {message})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:  # BadZipFile, ValueError (pickled object arrays), OSError
        raise MoelessError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def read_record(path: str | Path) -> dict[str, Any]:
    """The dict an engine saved: .pt/.pth (torch.save), .npz or .json."""
    path = Path(path)
    if not path.is_file():
        raise MoelessError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        record = _load_torch(path)
    elif suffix == ".npz":
        record = _load_npz(path)
    elif suffix == ".json":
        from moeless_cli.fileio import read_json

        record = read_json(path, "record file")
    else:
        raise MoelessError(f"{path}: unknown file type {suffix or '(none)'}; expected .csv, .pt, .pth, .npz or .json")
    if not isinstance(record, dict):
        raise MoelessError(f"{path}: expected a dict of arrays, got {type(record).__name__}")
    return record


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (any device), list or array as numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return (value.double() if value.is_floating_point() else value.long()).numpy()
    return np.asarray(value)


def array_field(record: dict[str, Any], key: str, path: Path | str, ndims: tuple[int, ...],
                dims: str, integer: bool = False) -> np.ndarray:
    """record[key] as a finite numpy array with one of `ndims` dimensions; `dims` names its axes
    for the error message, e.g. "[passes, layers, experts]"."""
    if key not in record:
        raise MoelessError(f"{path}: no {key!r} (found keys: {', '.join(map(str, record)) or 'none'})")
    try:
        value = to_numpy(record[key])
    except (TypeError, ValueError):
        raise MoelessError(f"{path}: {key} must be a numeric {dims} array") from None
    if value.ndim not in ndims or value.dtype.kind not in "iuf" + ("" if integer else "b"):
        raise MoelessError(f"{path}: {key} must be a numeric {dims} array, got shape {list(value.shape)} "
                           f"of {value.dtype}")
    if integer and value.dtype.kind == "f" and not np.all(value == np.round(value)):
        raise MoelessError(f"{path}: {key} must hold integers")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise MoelessError(f"{path}: {key} holds NaN or infinite values")
    return value


def check_map(phy2log: np.ndarray, path: Path | str, key: str, num_experts: int | None = None) -> None:
    """phy2log: [rows, P] logical expert per slot; ids must be in [0, E)."""
    if phy2log.size and phy2log.min() < 0:
        raise MoelessError(f"{path}: {key} has negative expert ids")
    if num_experts is not None and phy2log.size and phy2log.max() >= num_experts:
        raise MoelessError(f"{path}: {key} has expert id {int(phy2log.max())}, but the model has "
                           f"{num_experts} experts (a record from another model size?)")


def fold_to_logical(physical: np.ndarray, phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Sum slot counts into logical experts. physical: [..., layers, P]; phy2log: [layers, P].

    Returns [..., layers, E] float64."""
    num_layers = phy2log.shape[0]
    index = (phy2log + num_experts * np.arange(num_layers)[:, None]).reshape(-1)  # [layers * P]
    flat = physical.reshape(-1, index.size).astype(np.float64)
    out = np.zeros((flat.shape[0], num_layers * num_experts))
    for i, row in enumerate(flat):
        out[i] = np.bincount(index, weights=row, minlength=num_layers * num_experts)
    return out.reshape(*physical.shape[:-2], num_layers, num_experts)
