"""`moeless profile`: load a model and a workload, run it with hooks, write a profile directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from moeless_cli.profiling.format import save_profile


def default_out_dir(model: str, dataset: str) -> Path:
    """profiles/<model>-<dataset>/ with path-like names reduced to their last component's stem."""
    def short(name: str) -> str:
        return Path(name.rstrip("/")).stem or "model"

    return Path("profiles") / f"{short(model)}-{short(dataset)}"


def record_profile(model: str, dataset: str, options: Any, out: str | Path | None = None,
                   text_field: str | None = None, device: str = "cpu", dtype: str | None = None,
                   progress: Callable[[int], Any] | None = None, on_pass: Callable[[], None] | None = None,
                   ) -> tuple[Path, dict[str, Any]]:
    """Profile `model` on `dataset`; returns (profile directory, summary dict).

    Inputs are checked (model, dataset, options, output location) before the model runs.
    `progress(total)` is called once with the number of forward passes to expect.
    """
    from moeless_cli.fileio import _check_parent_writable  # the writer's own check, run before the model
    from moeless_cli.models import load_moe_model
    from moeless_cli.profiling.expert_timing import measure_expert_seconds
    from moeless_cli.profiling.recorder import RoutingRecorder
    from moeless_cli.profiling.runner import count_passes, generate, tokenize_batches
    from moeless_cli.workloads.prompts import load_prompts

    options.validate()
    out = Path(out) if out is not None else default_out_dir(model, dataset)
    _check_parent_writable(out)  # fail before minutes of work, not after
    prompts = load_prompts(dataset, text_field=text_field, num_prompts=options.num_prompts, seed=options.seed)
    loaded = load_moe_model(model, device=device, dtype=dtype)
    batches = tokenize_batches(loaded, prompts, options)
    if progress is not None:
        progress(count_passes(batches, options.max_new_tokens))

    started = time.perf_counter()
    with RoutingRecorder(loaded, options.router_samples, seed=options.seed) as recorder:
        trace = generate(loaded, batches, options.max_new_tokens, recorder, on_pass=on_pass)
    wall = time.perf_counter() - started
    expert_timing = measure_expert_seconds(loaded)

    load = recorder.load()  # [iterations, layers, experts]
    topk_ids = recorder.topk_ids()  # [tokens, layers, top_k]
    sample = recorder.router_sample()
    domains = prompts.domains
    domain_index = {d: i for i, d in enumerate(domains)}
    phase = np.asarray(trace.iteration_phase, np.uint8)
    seconds = np.asarray(trace.iteration_seconds, np.float64)
    arrays = {
        "load": load,
        "iteration_phase": phase,
        "iteration_batch": np.asarray(trace.iteration_batch, np.int32),
        "iteration_tokens": np.asarray(trace.iteration_tokens, np.int32),
        "iteration_seconds": seconds,
        "topk_ids": topk_ids,
        "token_request": np.concatenate(trace.token_request),
        "token_phase": np.concatenate(trace.token_phase),
        "token_iteration": np.concatenate(trace.token_iteration),
        "token_position": np.concatenate(trace.token_position),
        "token_ids": np.concatenate(trace.token_ids),
        "request_domain": np.asarray([domain_index[p.domain] for p in prompts.prompts], np.int16),
        "request_prompt_tokens": np.asarray([int(b.attention_mask[i].sum()) for b in batches
                                             for i in range(len(b.request_ids))], np.int32),
    }
    if sample is not None:
        arrays["router_inputs"], arrays["router_input_tokens"] = sample
    assert load.sum() == topk_ids.shape[0] * loaded.num_moe_layers * loaded.top_k, "load and top-k ids disagree"

    timings = {
        "device": str(next(loaded.model.parameters()).device),
        "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
        "forward_seconds_total": float(seconds.sum()),
        "prefill_seconds": float(seconds[phase == 0].sum()),
        "decode_seconds": float(seconds[phase == 1].sum()),
        "wall_seconds": wall,
        "expert": expert_timing,
    }
    sizes = {
        "iterations": int(load.shape[0]),
        "tokens": int(topk_ids.shape[0]),
        "requests": len(prompts),
        "samples": 0 if sample is None else int(sample[0].shape[0]),
    }
    manifest = {
        "kind": "recorded",
        "model": {"id": loaded.model_id, "family": loaded.family, "config_hash": loaded.config_hash,
                  "path": str(loaded.path)},
        "num_layers": loaded.num_moe_layers,
        "moe_layer_ids": loaded.moe_layer_ids,
        "num_experts": loaded.num_experts,
        "top_k": loaded.top_k,
        "hidden_size": loaded.hidden_size,
        "expert_bytes": loaded.expert_bytes,
        "iterations": sizes["iterations"],
        "dataset": {"name": dataset, "domains": domains, "text_field": text_field,
                    "sources": sorted({p.source for p in prompts.prompts})},
        "sizes": sizes,
        "options": options.as_dict(),
        "timings": timings,
    }
    save_profile(out, manifest, arrays)
    return out, summarize(manifest, load)


def summarize(manifest: dict[str, Any], load: np.ndarray) -> dict[str, Any]:
    """The --json document: sizes plus per-layer max/mean load and hottest experts."""
    totals = load.sum(axis=0)  # [layers, experts]
    layers = []
    for j, row in enumerate(totals):
        mean = float(row.mean())
        layers.append({
            "layer": int(manifest.get("moe_layer_ids", list(range(len(totals))))[j]),
            "max": float(row.max()),
            "mean": mean,
            "imbalance": float(row.max() / mean) if mean > 0 else 0.0,
            "hottest": [int(e) for e in np.argsort(-row, kind="stable")[:3]],
        })
    sizes = manifest.get("sizes", {})
    return {
        "layers": manifest["num_layers"],
        "experts": manifest["num_experts"],
        "top_k": manifest["top_k"],
        "iterations": manifest["iterations"],
        "tokens": sizes.get("tokens", 0),
        "requests": sizes.get("requests", 0),
        "router_samples": sizes.get("samples", 0),
        "model": manifest["model"]["id"],
        "per_layer": layers,
    }
