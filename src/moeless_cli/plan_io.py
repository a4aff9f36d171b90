"""Plan files (schema moeless.plan/v1): write atomically, read with validation, export to engines.

The core is fixed (see docs/plan-format.md); extra top-level keys (model, solver, metrics, ...)
are carried along. Validation errors name the field at fault, e.g. `layers[3].replicas[7].share`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.checks import MAX_EXPERTS, MAX_GPUS, MAX_LAYERS, shown
from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json, write_json_atomic
from moeless_cli.planning.plan import LayerPlan, Plan

SCHEMA = "moeless.plan/v1"
SHARE_TOLERANCE = 1e-6  # |sum of an expert's shares - 1| allowed


def plan_to_dict(plan: Plan, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of a plan: the fixed core, then `extra` keys (which may not override it)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "num_gpus": plan.num_gpus,
        "num_layers": plan.num_layers,
        "num_experts": plan.num_experts,
        "layers": [
            {
                "layer": i,
                "replicas": [
                    {"expert": int(e), "gpu": int(g), "share": float(s)}
                    for e, g, s in zip(layer.expert.tolist(), layer.gpu.tolist(), layer.share.tolist())
                ],
            }
            for i, layer in enumerate(plan.layers)
        ],
    }
    for key, value in (extra or {}).items():
        assert key not in doc, f"extra key {key} would override the plan core"
        doc[key] = value
    return doc


def write_plan(path: str | Path, plan: Plan, extra: dict[str, Any] | None = None) -> Path:
    validate_plan_dict(plan_to_dict(plan), "plan")  # internal invariant: never write a bad plan
    return write_json_atomic(path, plan_to_dict(plan, extra))


def _int_field(obj: dict, key: str, where: str, low: int, high: int | None = None) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MoelessError(f"{where}{key}: expected an integer, got {shown(value)}")
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise MoelessError(f"{where}{key}: {value} is not {bound}")
    return value


def validate_plan_dict(doc: Any, source: str) -> Plan:
    """Check every field of a plan document and build the Plan; errors name the field at fault."""
    if not isinstance(doc, dict):
        raise MoelessError(f"{source}: a plan must be a JSON object")
    if doc.get("schema") != SCHEMA:
        raise MoelessError(f"{source}: schema: expected {SCHEMA!r}, got {shown(doc.get('schema'))}")
    num_gpus = _int_field(doc, "num_gpus", f"{source}: ", 1, MAX_GPUS + 1)
    num_layers = _int_field(doc, "num_layers", f"{source}: ", 1, MAX_LAYERS + 1)
    num_experts = _int_field(doc, "num_experts", f"{source}: ", 1, MAX_EXPERTS + 1)
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != num_layers:
        got = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise MoelessError(f"{source}: layers: expected a list of {num_layers} layers, got {got}")
    out = [_layer_plan(entry, f"{source}: layers[{i}]", i, num_gpus, num_experts) for i, entry in enumerate(layers)]
    return Plan(num_gpus, num_experts, out)


def _layer_plan(entry: Any, where: str, index: int, num_gpus: int, num_experts: int) -> LayerPlan:
    """One `layers[i]` entry: replicas with in-range ids and shares summing to 1 per expert.

    An expert may sit twice on one GPU: engines' slot maps (DeepSeek EPLB, SGLang, vLLM) do that,
    and the eplb solver reproduces them."""
    if not isinstance(entry, dict) or entry.get("layer") != index or isinstance(entry.get("layer"), bool):
        raise MoelessError(f"{where}.layer: expected {index}")
    replicas = entry.get("replicas")
    if not isinstance(replicas, list) or not replicas:
        raise MoelessError(f"{where}.replicas: expected a non-empty list")
    if len(replicas) > num_gpus * num_experts:
        raise MoelessError(f"{where}.replicas: {len(replicas)} replicas, more than {num_gpus} GPUs x "
                           f"{num_experts} experts can hold")
    expert, gpu, share = [], [], []
    for r, rep in enumerate(replicas):
        at = f"{where}.replicas[{r}]."
        if not isinstance(rep, dict):
            raise MoelessError(f"{at[:-1]}: expected an object with expert, gpu, share")
        expert.append(_int_field(rep, "expert", at, 0, num_experts))
        gpu.append(_int_field(rep, "gpu", at, 0, num_gpus))
        s = rep.get("share")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
            raise MoelessError(f"{at}share: expected a number in [0, 1], got {shown(s)}")
        share.append(float(s))
    layer = LayerPlan.from_lists(expert, gpu, share)
    sums = np.bincount(layer.expert, weights=layer.share, minlength=num_experts)  # [experts]
    counts = layer.replica_counts(num_experts)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise MoelessError(f"{where}.replicas: expert {int(missing[0])} has no replica")
    off = np.flatnonzero(np.abs(sums - 1.0) > SHARE_TOLERANCE)
    if off.size:
        raise MoelessError(f"{where}.replicas: shares of expert {int(off[0])} sum to {sums[off[0]]:.6g}, not 1")
    return layer


def read_plan(path: str | Path) -> tuple[Plan, dict[str, Any]]:
    """Read and validate a plan file. Returns the plan and the whole document (for extra keys)."""
    doc = read_json(path, "plan file")
    return validate_plan_dict(doc, str(path)), doc


def physical_to_logical(plan: Plan) -> tuple[np.ndarray, int]:
    """Slot map for engines with equal slot blocks per GPU (SGLang, vLLM, DeepSeek EPLB).

    Each GPU's block is padded to the largest block with extra copies of the expert it serves most
    of (or, for an empty GPU, the expert with the largest share anywhere). Returns
    phy2log [layers, P] with P = G * slots, and the number of padding slots added.
    """
    G = plan.num_gpus
    width = max(int(layer.slots_used(G).max()) for layer in plan.layers)
    rows, padded = [], 0
    for layer in plan.layers:
        row = []
        fallback = int(layer.expert[np.argmax(layer.share)])
        for g in range(G):
            mine = np.flatnonzero(layer.gpu == g)
            block = layer.expert[mine].tolist()
            fill = int(layer.expert[mine[np.argmax(layer.share[mine])]]) if mine.size else fallback
            padded += width - len(block)
            row.extend(block + [fill] * (width - len(block)))
        rows.append(row)
    return np.asarray(rows, dtype=np.int64), padded


def logical_to_physical(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek EPLB's inverse maps of phy2log: [layers, P].

    Returns log2phy [layers, E, max count] (each expert's slots ascending, padded with -1) and
    logcnt [layers, E] (replicas of each expert)."""
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])  # [layers, E]
    log2phy = np.full((*logcnt.shape, max(int(logcnt.max()), 1)), -1, dtype=np.int64)
    for i, row in enumerate(phy2log):
        seen = np.zeros(num_experts, dtype=np.int64)
        for p, e in enumerate(row.tolist()):
            log2phy[i, e, seen[e]] = p
            seen[e] += 1
    return log2phy, logcnt


def decoder_rows(moe_rows: list, trivial: list, moe_layer_ids: list[int] | None, dense_layers: int | None,
                 num_hidden_layers: int | None = None) -> list:
    """SGLang's row per decoder layer from one row per MoE layer; dense layers get `trivial`.

    `dense_layers` K: K leading dense rows. Otherwise MoE layer i goes to row moe_layer_ids[i]
    (from the profile), with dense rows between and, up to num_hidden_layers, after."""
    if dense_layers is None and moe_layer_ids and len(moe_layer_ids) == len(moe_rows):
        rows = [trivial] * max(max(moe_layer_ids) + 1, num_hidden_layers or 0)
        for i, layer_id in enumerate(moe_layer_ids):
            rows[layer_id] = moe_rows[i]
        return rows
    return [trivial] * (dense_layers or 0) + list(moe_rows)


def export_plan(
    plan: Plan, fmt: str, dense_layers: int | None = None, moe_layer_ids: list[int] | None = None,
    num_hidden_layers: int | None = None,
) -> tuple[dict[str, Any], int]:
    """Engine documents: sglang {"physical_to_logical_map"} with one row per decoder layer,
    vllm {"physical_to_logical_map"} (MoE rows only), deepseek {"phy2log", "log2phy", "logcnt"}.

    SGLang rows: see `decoder_rows` (trivial rows, slot p holding p % E, for dense layers).
    Returns (document, padding slots added)."""
    phy2log, padded = physical_to_logical(plan)
    if fmt == "sglang":
        trivial = (np.arange(phy2log.shape[1]) % plan.num_experts).tolist()
        rows = decoder_rows(phy2log.tolist(), trivial, moe_layer_ids, dense_layers, num_hidden_layers)
        return {"physical_to_logical_map": rows}, padded
    if fmt == "vllm":
        return {"physical_to_logical_map": phy2log.tolist()}, padded
    if fmt == "deepseek":
        log2phy, logcnt = logical_to_physical(phy2log, plan.num_experts)
        return {"phy2log": phy2log.tolist(), "log2phy": log2phy.tolist(), "logcnt": logcnt.tolist()}, padded
    raise MoelessError(f"unknown export format {fmt!r}; choose sglang, vllm or deepseek")
