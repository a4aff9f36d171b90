"""Engines' own files in and out (see docs/interop.md; formats from INTEROP.md).

In: `import_loads` turns a `layer,expert,count` CSV, SGLang expert-distribution dumps or a saved
vLLM EPLB load window into a profile (one load row per recorded pass / window sample, MoE layers
only; SGLang's per-token dumps also give per-token routing). Out: `export_for_engine` turns a plan
into SGLang's `--init-expert-location` (a slot map, or `logical_count` loads for SGLang's own
EPLB), vLLM's `physical_to_logical_map` or DeepSeek EPLB's triple.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.checks import MAX_LAYERS, optional_integer
from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.interop.records import EngineLoads, read_record

IMPORT_FORMATS = ("auto", "csv", "sglang", "vllm")
EXPORT_FORMATS = ("sglang", "sglang-logical-count", "vllm", "deepseek")
SGLANG_KEYS = ("logical_count", "records")
VLLM_KEYS = ("expert_load_window", "load_window_cpu")


def read_engine_loads(paths: list[Path], fmt: str, num_experts: int | None) -> EngineLoads:
    """Read SGLang dumps (one stat file, or per-rank per_pass / per_token files) or one vLLM window."""
    from moeless_cli.interop import sglang, sglang_tokens, vllm

    records = [read_record(p) for p in paths]
    if fmt == "auto":
        keys = set(records[0])
        fmt = "sglang" if keys & set(SGLANG_KEYS) else "vllm" if keys & set(VLLM_KEYS) else ""
        if not fmt:
            raise MoelessError(f"{paths[0]}: not an SGLang dump ({', '.join(SGLANG_KEYS)}) nor a vLLM load window "
                               f"({', '.join(VLLM_KEYS)}); found keys: {', '.join(map(str, keys)) or 'none'}")
    if fmt == "sglang" and "records" in records[0]:
        maps, experts = sglang.detail_maps(paths, records, num_experts)
        if sglang.has_token_ids(records):
            return sglang_tokens.read_tokens(paths, records, maps, experts)
        return sglang.read_per_pass(paths, records, maps, experts)
    if len(paths) > 1:
        raise MoelessError(f"give one {fmt} file ({len(paths)} given); several files are for SGLang "
                           "per_pass / per_token dumps, one per rank")
    if fmt == "sglang":
        return sglang.read_stat(paths[0], records[0])
    return vllm.read_window(paths[0], records[0], num_experts)


def _check_sizes(loads: EngineLoads, path: Path, num_experts: int | None, top_k: int | None) -> int | None:
    """Reject a record of another model size; returns the top-k to record."""
    experts = loads.load.shape[2]
    if num_experts is not None and experts != num_experts:
        raise MoelessError(f"{path}: the record has {experts} experts per layer, --num-experts says {num_experts} "
                           "(a dump from another model size?)")
    if top_k is not None and not 1 <= top_k <= experts:
        raise MoelessError(f"--top-k must be between 1 and {experts} (got {top_k})")
    if top_k is not None and loads.top_k is not None and top_k != loads.top_k:
        raise MoelessError(f"{path}: tokens chose {loads.top_k} experts each, --top-k says {top_k}")
    return top_k if top_k is not None else loads.top_k


def engine_manifest(loads: EngineLoads, paths: list[Path], top_k: int | None) -> dict[str, Any]:
    """The manifest of a profile imported from an engine record (kind "imported")."""
    iterations, layers, experts = loads.load.shape
    tokens = 0 if loads.routing is None else int(loads.routing["topk_ids"].shape[0])
    requests = 0 if loads.routing is None else int(np.unique(loads.routing["token_request"]).size)
    return {
        "kind": "imported",
        "model": {"id": paths[0].stem, "family": None, "config_hash": None},
        "num_layers": layers,
        "moe_layer_ids": loads.moe_layer_ids,
        "num_experts": experts,
        "top_k": top_k,
        "hidden_size": None,
        "expert_bytes": None,
        "iterations": iterations,
        "dataset": {"name": str(paths[0]), "domains": [], "where": {}},
        "sizes": {"iterations": iterations, "tokens": tokens, "requests": requests, "samples": 0},
        "source": {"format": loads.fmt, "files": [str(p) for p in paths], "engine_rows": loads.engine_rows,
                   "dense_rows_dropped": loads.dense_rows, "samples_in_file": loads.samples_in_file,
                   "phase_known": loads.iteration_phase is not None, "total_count": float(loads.load.sum()),
                   "notes": loads.notes},
    }


def import_loads(files: list[Path], fmt: str = "auto", where: dict[str, str] | None = None,
                 num_experts: int | None = None, top_k: int | None = None,
                 out: str | Path | None = None, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """`moeless profile import`: write a load profile from a CSV or an engine record (replacing an
    existing profile at `out` only with `force`)."""
    from moeless_cli.profiling.format import check_profile_out, save_profile
    from moeless_cli.profiling.importer import import_loads_csv

    require_choice("--format", fmt, IMPORT_FORMATS)
    paths = [Path(f) for f in files]
    if not paths:
        raise MoelessError("give a load file to import")
    if fmt == "csv" or (fmt == "auto" and all(p.suffix.lower() == ".csv" for p in paths)):
        if len(paths) != 1:
            raise MoelessError(f"give one CSV file ({len(paths)} given)")
        return import_loads_csv(paths[0], where or {}, num_experts=num_experts, top_k=top_k, out=out, force=force)
    if where:
        raise MoelessError("--where filters CSV rows only")
    out = Path(out) if out is not None else Path("profiles") / paths[0].stem
    check_profile_out(out, force)  # before reading: a bad output fails first
    loads = read_engine_loads(paths, fmt, num_experts)
    manifest = engine_manifest(loads, paths, _check_sizes(loads, paths[0], num_experts, top_k))
    phase = loads.iteration_phase if loads.iteration_phase is not None else np.zeros(len(loads.load), np.uint8)
    arrays = {"load": loads.load, "iteration_phase": phase, **(loads.routing or {})}
    if loads.routing is not None:
        per_pass = np.bincount(loads.routing["token_iteration"], minlength=len(phase))
        arrays["iteration_tokens"] = per_pass.astype(np.int32)
    save_profile(out, manifest, arrays, force)
    return out, manifest


def import_notes(manifest: dict[str, Any]) -> dict[str, Any]:
    """What an engine import did, for --json and the console (empty for a CSV import)."""
    source = manifest.get("source") or {}
    if "format" not in source:
        return {}
    return {"format": source["format"], "dense_layers_dropped": source["dense_rows_dropped"],
            "engine_rows": source["engine_rows"], "samples_in_file": source["samples_in_file"],
            "notes": source["notes"]}


def _plan_source(plan_doc: dict[str, Any]) -> dict[str, Any]:
    """The plan file's `source` record (what it was made from), or {} when absent or malformed."""
    source = plan_doc.get("source")
    return source if isinstance(source, dict) else {}


def _is_existing(path: str, kind: str) -> bool:
    """Whether `path` names an existing file or dir; False for names no file system could hold."""
    try:
        return Path(path).is_dir() if kind == "dir" else Path(path).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _profile_for(plan_file: Path, plan_doc: dict[str, Any], profile_dir: Path | None, num_layers: int,
                 num_experts: int) -> Any:
    """The profile named by --profile, else the plan's source profile if it still exists (or None)."""
    from moeless_cli.profiling import load_profile

    if profile_dir is None:
        source = _plan_source(plan_doc).get("profile")
        if not isinstance(source, str) or not _is_existing(source, "dir"):
            return None
        profile_dir = Path(source)
    profile = load_profile(profile_dir)
    if (profile.num_layers, profile.num_experts) != (num_layers, num_experts):
        raise MoelessError(f"profile {profile_dir} has {profile.num_layers} MoE layers x {profile.num_experts} "
                           f"experts, the plan {plan_file} {num_layers} x {num_experts} (another model size?)")
    return profile


def _plan_loads(plan_file: Path, plan_doc: dict[str, Any], profile: Any) -> np.ndarray:
    """The loads [layers, experts] a plan was made from: its profile's, or its CSV's."""
    if profile is not None:
        return np.asarray(profile.load, dtype=np.float64).sum(axis=0)
    source = _plan_source(plan_doc)
    where = source.get("where") or {}
    if isinstance(source.get("loads"), str) and _is_existing(source["loads"], "file") and isinstance(where, dict):
        from moeless_cli.loads_csv import read_loads_csv

        return read_loads_csv(source["loads"], {str(k): str(v) for k, v in where.items()})
    raise MoelessError(f"{plan_file}: sglang-logical-count writes the loads the plan was made from, but its "
                       "source is gone; give --profile DIR")


def _moe_layer_ids(plan_file: Path, plan_doc: dict[str, Any], profile: Any) -> list[int] | None:
    moe_ids = plan_doc.get("moe_layer_ids")
    if moe_ids is not None and not (isinstance(moe_ids, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_LAYERS for i in moe_ids)):
        raise MoelessError(f"{plan_file}: moe_layer_ids: expected a list of layer indices in [0, {MAX_LAYERS})")
    return moe_ids if moe_ids is not None or profile is None else profile.moe_layer_ids


def export_for_engine(plan_file: Path, fmt: str, dense_layers: int | None = None,
                      profile_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`moeless plan export`: the engine document and a summary (without the output path)."""
    from moeless_cli.interop.sglang import logical_count_document
    from moeless_cli.plan_io import export_plan, read_plan

    require_choice("--format", fmt, EXPORT_FORMATS)
    optional_integer("--dense-layers", dense_layers, 0, MAX_LAYERS)
    plan, plan_doc = read_plan(plan_file)
    profile = _profile_for(plan_file, plan_doc, profile_dir, plan.num_layers, plan.num_experts)
    moe_ids = _moe_layer_ids(plan_file, plan_doc, profile)
    source = (profile.manifest.get("source") or {}) if profile is not None else {}
    engine_rows = source.get("engine_rows") if str(source.get("format", "")).startswith("sglang") else None
    optional_integer(f"profile {getattr(profile, 'path', '')}: source.engine_rows", engine_rows, 1, MAX_LAYERS)
    if fmt == "sglang-logical-count":
        load = _plan_loads(plan_file, plan_doc, profile)
        doc = logical_count_document(load, moe_ids, dense_layers, engine_rows)
        digest = hashlib.sha256(np.ascontiguousarray(load).tobytes()).hexdigest()[:16]
        return doc, {"format": fmt, "rows": len(doc["logical_count"]), "num_experts": plan.num_experts,
                     "loads_match_plan": digest == plan_doc.get("loads_hash")}
    doc, padded = export_plan(plan, fmt, dense_layers, moe_ids, engine_rows)
    rows = doc.get("physical_to_logical_map") or doc["phy2log"]
    return doc, {"format": fmt, "num_physical": len(rows[0]), "rows": len(rows), "padding_slots": padded,
                 "slots_per_gpu": len(rows[0]) // plan.num_gpus,
                 "num_redundant_experts": len(rows[0]) - plan.num_experts}


def describe_export(summary: dict[str, Any]) -> str:
    """One console line for `plan export`, with the engine flag the file needs."""
    if summary["format"] == "sglang-logical-count":
        match = "" if summary["loads_match_plan"] else " (not the loads the plan was made from)"
        return (f"wrote {summary['out']}: logical_count, {summary['rows']} rows x {summary['num_experts']} experts"
                f"{match}; start SGLang with --init-expert-location {summary['out']}")
    line = (f"wrote {summary['out']}: {summary['rows']} rows x {summary['num_physical']} slots "
            f"({summary['slots_per_gpu']} per GPU, {summary['padding_slots']} padding slots)")
    if summary["format"] == "sglang":
        line += (f"; start SGLang with --init-expert-location {summary['out']} "
                 f"--ep-num-redundant-experts {summary['num_redundant_experts']}")
    elif summary["format"] == "vllm":
        line += f"; vLLM: num_redundant_experts {summary['num_redundant_experts']} in --eplb-config"
    return line
