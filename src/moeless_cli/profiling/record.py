"""`moeless profile`: load a model and a workload, run it with hooks, write a profile directory."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.profiling.format import save_profile


def default_out_dir(model: str, dataset: str) -> Path:
    """profiles/<model>-<dataset>/: a checkpoint directory's name, a data file's name without suffix."""
    model_name = Path(str(model).rstrip("/")).name or "model"
    data = Path(str(dataset).rstrip("/"))
    data_name = data.stem if data.suffix.lower() in {".json", ".jsonl", ".parquet", ".csv", ".txt"} else data.name
    return Path("profiles") / f"{model_name}-{data_name or 'dataset'}"


SMALL_MODEL_HIDDEN = 1024  # below this width a CPU forward is many tiny matmuls: one thread is fastest


def choose_threads(model: str, device: str, threads: int | None) -> int | None:
    """torch CPU threads for the run: None = auto (1 for small models on CPU), 0 = torch's default.

    Tiny models gain nothing from intra-op threads, and on a shared machine OpenMP threads that
    spin-wait for a busy core made decode passes ~30x slower in our measurements.
    """
    if threads is not None:
        return threads or None
    if device != "cpu":
        return None
    from moeless_cli.models.loading import read_model_config, resolve_model_path

    hidden = read_model_config(resolve_model_path(model)).get("hidden_size") or 0
    return 1 if isinstance(hidden, int) and hidden < SMALL_MODEL_HIDDEN else None


def record_profile(model: str, dataset: str, options: Any, out: str | Path | None = None,
                   text_field: str | None = None, device: str = "cpu", dtype: str | None = None,
                   threads: int | None = None, progress: Callable[[int], Any] | None = None,
                   on_pass: Callable[[], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Profile `model` on `dataset`; returns (profile directory, summary dict).

    Inputs are checked (model, dataset, options, output location) before the model runs.
    `progress(total)` is called once with the number of forward passes to expect.
    threads: torch CPU threads (None: auto, see choose_threads; 0: torch's default); restored after.
    """
    from moeless_cli.fileio import _check_parent_writable  # the writer's own check, run before the model
    from moeless_cli.workloads.prompts import load_prompts

    options.validate()
    out = Path(out) if out is not None else default_out_dir(model, dataset)
    _check_parent_writable(out)  # fail before minutes of work, not after
    prompts = load_prompts(dataset, text_field=text_field, num_prompts=options.num_prompts, seed=options.seed)
    with _torch_threads(choose_threads(model, device, threads)):
        manifest, arrays = _run(model, prompts, options, device, dtype, progress, on_pass)
    manifest["dataset"]["text_field"] = text_field
    save_profile(out, manifest, arrays)
    return out, summarize(manifest, arrays["load"])


def _run(model: str, prompts: Any, options: Any, device: str, dtype: str | None,
         progress: Callable[[int], Any] | None, on_pass: Callable[[], None] | None,
         ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load the model, generate with hooks, time an expert; returns (manifest, arrays)."""
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.profiling.expert_timing import measure_expert_seconds
    from moeless_cli.profiling.recorder import RoutingRecorder
    from moeless_cli.profiling.runner import count_passes, generate, tokenize_batches

    loaded = load_moe_model(model, device=device, dtype=dtype)
    batches = tokenize_batches(loaded, prompts, options)
    if progress is not None:
        progress(count_passes(batches, options.max_new_tokens))
    started = time.perf_counter()
    try:
        with RoutingRecorder(loaded, options.router_samples, seed=options.seed) as recorder:
            trace = generate(loaded, batches, options.max_new_tokens, recorder, on_pass=on_pass)
    except (RuntimeError, IndexError) as exc:  # out of memory, prompt longer than the model allows, ...
        message = " ".join(str(exc).split())[:200]
        raise MoelessError(f"model {loaded.model_id} failed during profiling: {type(exc).__name__}: {message} "
                           "(try a smaller --batch-size or --max-prompt-tokens)") from None
    wall = time.perf_counter() - started

    domain_index = {d: i for i, d in enumerate(prompts.domains)}
    phase = np.asarray(trace.iteration_phase, np.uint8)  # [iterations]
    seconds = np.asarray(trace.iteration_seconds, np.float64)  # [iterations]
    arrays = {
        "load": recorder.load(),  # [iterations, layers, experts]
        "iteration_phase": phase,
        "iteration_batch": np.asarray(trace.iteration_batch, np.int32),
        "iteration_tokens": np.asarray(trace.iteration_tokens, np.int32),
        "iteration_seconds": seconds,
        "topk_ids": recorder.topk_ids(),  # [tokens, layers, top_k]
        "token_request": np.concatenate(trace.token_request),
        "token_phase": np.concatenate(trace.token_phase),
        "token_iteration": np.concatenate(trace.token_iteration),
        "token_position": np.concatenate(trace.token_position),
        "token_ids": np.concatenate(trace.token_ids),
        "request_domain": np.asarray([domain_index[p.domain] for p in prompts.prompts], np.int16),
        "request_prompt_tokens": np.concatenate([b.attention_mask.sum(-1).numpy() for b in batches]).astype(np.int32),
    }
    sample = recorder.router_sample()
    if sample is not None:
        arrays["router_inputs"], arrays["router_input_tokens"] = sample
    tokens = int(arrays["topk_ids"].shape[0])
    assert arrays["load"].sum() == tokens * loaded.num_moe_layers * loaded.top_k, "load and top-k ids disagree"

    param = next(loaded.model.parameters())
    timings = {
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "forward_seconds_total": float(seconds.sum()),
        "prefill_seconds": float(seconds[phase == 0].sum()),
        "decode_seconds": float(seconds[phase == 1].sum()),
        "wall_seconds": wall,
        "torch_threads": int(torch.get_num_threads()),
        "expert": measure_expert_seconds(loaded),
    }
    sizes = {"iterations": int(phase.shape[0]), "tokens": tokens, "requests": len(prompts),
             "samples": 0 if sample is None else int(sample[0].shape[0])}
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
        "expert_params": loaded.expert_params,
        "iterations": sizes["iterations"],
        "dataset": {"name": prompts.name, "domains": prompts.domains,
                    "sources": sorted({p.source for p in prompts.prompts})},
        "sizes": sizes,
        "options": options.as_dict(),
        "timings": timings,
    }
    return manifest, arrays


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run with `count` torch CPU threads (None: leave as is), then restore the previous count."""
    if not count:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    timings = manifest.get("timings") or {}
    return {
        "layers": manifest["num_layers"],
        "experts": manifest["num_experts"],
        "top_k": manifest["top_k"],
        "iterations": manifest["iterations"],
        "tokens": sizes.get("tokens", 0),
        "requests": sizes.get("requests", 0),
        "router_samples": sizes.get("samples", 0),
        "model": manifest["model"]["id"],
        "domains": (manifest.get("dataset") or {}).get("domains", []),
        "forward_seconds": timings.get("forward_seconds_total"),
        "expert_seconds_per_token": (timings.get("expert") or {}).get("seconds_per_token"),
        "per_layer": layers,
    }
