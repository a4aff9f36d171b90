"""Run a model over prompts with routing hooks: the torch-level half of the profile job (`jobs/profile.py`).

`record_routing` loads the model, generates with a RoutingRecorder attached and times one expert;
it returns the profile's manifest and arrays, which the job writes with `save_profile`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError


def record_routing(model: str, prompts: Any, options: Any, device: str, dtype: str | None, threads: int | None,
                   progress: Callable[[int], Any] | None, on_pass: Callable[[], None] | None,
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load the model, generate with hooks, time an expert on `threads` torch CPU threads (None: as is,
    restored after); returns (manifest, arrays).

    `progress(total)` is called once with the number of forward passes to expect, `on_pass()` after each.
    """
    from moeless_cli.models.threads import torch_threads

    with torch_threads(threads):
        return _record(model, prompts, options, device, dtype, progress, on_pass)


def _record(model: str, prompts: Any, options: Any, device: str, dtype: str | None,
            progress: Callable[[int], Any] | None, on_pass: Callable[[], None] | None,
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from moeless_cli.models import load_moe_model
    from moeless_cli.profiling.runner import count_passes, tokenize_batches

    loaded = load_moe_model(model, device=device, dtype=dtype)
    batches = tokenize_batches(loaded, prompts, options)
    if progress is not None:
        progress(count_passes(batches, options.max_new_tokens))
    started = time.perf_counter()
    recorder, trace = _generate(loaded, batches, options, on_pass)
    wall = time.perf_counter() - started
    arrays = _arrays(recorder, trace, prompts, batches)
    tokens = int(arrays["topk_ids"].shape[0])
    assert arrays["load"].sum() == tokens * loaded.num_moe_layers * loaded.top_k, "load and top-k ids disagree"
    return _manifest(loaded, prompts, options, arrays, wall), arrays


def _generate(loaded: Any, batches: list[Any], options: Any, on_pass: Callable[[], None] | None) -> tuple[Any, Any]:
    """Prefill + greedy decode with the recorder attached; returns (recorder, trace)."""
    from moeless_cli.profiling import runner
    from moeless_cli.profiling.recorder import RoutingRecorder

    try:
        with RoutingRecorder(loaded, options.router_samples, seed=options.seed) as recorder:
            trace = runner.generate(loaded, batches, options.max_new_tokens, recorder, on_pass=on_pass)
    except (RuntimeError, IndexError) as exc:  # out of memory, prompt longer than the model allows, ...
        message = " ".join(str(exc).split())[:200]
        raise MoelessError(f"model {loaded.model_id} failed during profiling: {type(exc).__name__}: {message} "
                           "(try a smaller --batch-size or --max-prompt-tokens)") from None
    return recorder, trace


def _arrays(recorder: Any, trace: Any, prompts: Any, batches: list[Any]) -> dict[str, np.ndarray]:
    """The profile's arrays (names and shapes as in profiling/format.py ARRAYS)."""
    domain_index = {d: i for i, d in enumerate(prompts.domains)}
    arrays = {
        "load": recorder.load(),  # [iterations, layers, experts]
        "iteration_phase": np.asarray(trace.iteration_phase, np.uint8),  # [iterations]
        "iteration_batch": np.asarray(trace.iteration_batch, np.int32),
        "iteration_tokens": np.asarray(trace.iteration_tokens, np.int32),
        "iteration_seconds": np.asarray(trace.iteration_seconds, np.float64),  # [iterations]
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
    return arrays


def _timings(loaded: Any, arrays: dict[str, np.ndarray], wall: float) -> dict[str, Any]:
    import torch

    from moeless_cli.profiling.expert_timing import measure_expert_seconds

    phase, seconds = arrays["iteration_phase"], arrays["iteration_seconds"]
    param = next(loaded.model.parameters())
    return {
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "forward_seconds_total": float(seconds.sum()),
        "prefill_seconds": float(seconds[phase == 0].sum()),
        "decode_seconds": float(seconds[phase == 1].sum()),
        "wall_seconds": wall,
        "torch_threads": int(torch.get_num_threads()),
        "expert": measure_expert_seconds(loaded),
    }


def _manifest(loaded: Any, prompts: Any, options: Any, arrays: dict[str, np.ndarray], wall: float) -> dict[str, Any]:
    timings = _timings(loaded, arrays, wall)
    sample = arrays.get("router_inputs")
    sizes = {"iterations": int(arrays["iteration_phase"].shape[0]), "tokens": int(arrays["topk_ids"].shape[0]),
             "requests": len(prompts), "samples": 0 if sample is None else int(sample.shape[0])}
    return {
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
