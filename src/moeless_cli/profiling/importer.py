"""`moeless profile import`: turn load counts recorded elsewhere (CSV) into a load-only profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.loads_csv import read_loads_csv
from moeless_cli.profiling.format import check_profile_out, save_profile


def import_loads_csv(csv_path: str | Path, where: dict[str, str], num_experts: int | None = None,
                     top_k: int | None = None, out: str | Path | None = None,
                     force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write a profile with one iteration whose load is the CSV's (filtered, summed) counts.

    num_experts: pad the expert axis when the CSV's highest expert id is below the model's count.
    force: replace an existing profile at `out` (any other non-empty folder is refused).
    """
    csv_path = Path(csv_path)
    suffix = "-".join(f"{k}-{v}" for k, v in sorted(where.items()))
    out = Path(out) if out is not None else Path("profiles") / (csv_path.stem + (f"-{suffix}" if suffix else ""))
    check_profile_out(out, force)  # before reading: a bad output fails first
    load = read_loads_csv(csv_path, where)  # [layers, experts] float64
    if num_experts is not None:
        if num_experts < load.shape[1]:
            raise MoelessError(f"--num-experts {num_experts} is below the CSV's highest expert id + 1 ({load.shape[1]})")
        load = np.pad(load, ((0, 0), (0, num_experts - load.shape[1])))
    if top_k is not None and not 1 <= top_k <= load.shape[1]:
        raise MoelessError(f"--top-k must be between 1 and {load.shape[1]} (got {top_k})")
    manifest = {
        "kind": "imported",
        "model": {"id": csv_path.stem, "family": None, "config_hash": None},
        "num_layers": int(load.shape[0]),
        "moe_layer_ids": list(range(load.shape[0])),
        "num_experts": int(load.shape[1]),
        "top_k": top_k,
        "hidden_size": None,
        "expert_bytes": None,
        "iterations": 1,
        "dataset": {"name": str(csv_path), "domains": [], "where": where},
        "sizes": {"iterations": 1, "tokens": 0, "requests": 0, "samples": 0},
        "source": {"csv": str(csv_path), "where": where, "total_count": float(load.sum())},
    }
    arrays = {
        "load": load[None].astype(np.float64),  # [1, layers, experts]: counts may be fractional
        "iteration_phase": np.zeros(1, np.uint8),
    }
    save_profile(out, manifest, arrays, force)
    return out, manifest
