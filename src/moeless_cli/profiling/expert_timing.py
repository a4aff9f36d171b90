"""Measure one expert's compute time per token on this device, to calibrate a cost model later."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from moeless_cli.models import LoadedModel

TOKEN_COUNTS = (1, 16, 128, 512)  # batch sizes timed for one expert: fixed + per-token cost


@torch.no_grad()
def measure_expert_seconds(loaded: LoadedModel, token_counts: tuple[int, ...] = TOKEN_COUNTS,
                           repeats: int = 5) -> dict[str, Any]:
    """Time the first MoE layer's experts module with every token routed to expert 0 (top-1).

    Returns {"layer", "tokens", "seconds" (median per call), "seconds_per_token" (slope of a
    least-squares line through the points), "seconds_fixed" (its intercept)}; on a family whose
    experts module takes other arguments, {"error": ...} instead (the profile still succeeds).
    """
    experts = loaded.experts(0)
    param = next(loaded.model.parameters())
    device, dtype = param.device, param.dtype
    generator = torch.Generator(device="cpu").manual_seed(0)
    seconds = []
    try:
        for n in token_counts:
            x = torch.randn(n, loaded.hidden_size, generator=generator).to(device=device, dtype=dtype)  # [n, hidden]
            index = torch.zeros(n, 1, dtype=torch.long, device=device)  # [n, 1] all to expert 0
            weight = torch.ones(n, 1, dtype=dtype, device=device)  # [n, 1]
            experts(x, index, weight)  # warm-up (kernel selection, allocator)
            runs = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                experts(x, index, weight)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs.append(time.perf_counter() - start)
            seconds.append(statistics.median(runs))
    except (TypeError, RuntimeError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    slope, intercept = _line(list(token_counts), seconds)
    return {
        "layer": loaded.moe_layer_ids[0],
        "tokens": list(token_counts),
        "seconds": seconds,
        "seconds_per_token": max(slope, 0.0),
        "seconds_fixed": max(intercept, 0.0),
    }


def _line(xs: list[int], ys: list[float]) -> tuple[float, float]:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else 0.0
    return slope, mean_y - slope * mean_x
