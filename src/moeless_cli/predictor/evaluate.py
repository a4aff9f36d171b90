"""Scoring every method on the same held-out batches, and the moeless history blend.

What is compared, identically for every method: the eval tokens are the router-sampled tokens of
the held-out requests; a batch is those of one profiled iteration. Token methods are scored on
each token's top-k; every method predicts each batch's per-expert load, compared as fractions with
the true top-k counts of the batch's eval tokens. History methods (ema, last) see the full profiled
load of earlier iterations, as a serving system would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.predictor.history import EMA_ALPHAS, ema_prior
from moeless_cli.predictor.metrics import counts_from_topk, load_fractions, load_metrics, topk_recall

BLEND_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # share of the token estimate, validated per layer
TOKEN_METHODS = ("moeless", "moeless-paper", "reused-gate")  # predict each token's top-k


@dataclass(frozen=True)
class Blend:
    """How moeless turns token predictions into a batch load estimate for one layer."""

    weight: float  # share of the token-level count fractions; the rest is the EMA prior
    alpha: float  # EMA smoothing of the history prior (also the ema baseline's, chosen the same way)
    mode: str = "soft"  # token counts: "soft" (calibrated selection probabilities) or "hard" (top-k)


def batch_counts(topk: np.ndarray, batches: list[np.ndarray], num_experts: int) -> np.ndarray:
    """Per-batch assignment counts from top-k ids. topk: [tokens, k] -> [batches, experts]."""
    return np.stack([counts_from_topk(topk[idx], num_experts) for idx in batches]) if batches else np.zeros((0, num_experts))


def batch_sums(values: np.ndarray, batches: list[np.ndarray]) -> np.ndarray:
    """Per-batch sums of per-token values. values: [tokens, experts] -> [batches, experts]."""
    return np.stack([values[idx].sum(axis=0) for idx in batches]) if batches else np.zeros((0, values.shape[1]))


def choose_alpha(layer_load: np.ndarray, iterations: np.ndarray, true_loads: np.ndarray) -> float:
    """The EMA smoothing with the lowest mean TVD on validation batches.

    layer_load: [profile iterations, experts]; iterations: [batches] rows of it; true_loads: [batches, experts].
    """
    def error(alpha: float) -> float:
        return float(load_metrics(ema_prior(layer_load, alpha)[iterations], true_loads)["load_tvd"])

    return min(EMA_ALPHAS, key=error) if len(iterations) else EMA_ALPHAS[2]


def choose_blend(token_loads: dict[str, np.ndarray], prior: np.ndarray, true_loads: np.ndarray) -> tuple[str, float]:
    """The token count mode and its mix with the history prior with the lowest validation TVD.

    token_loads: mode ("soft" calibrated probabilities, "hard" top-k counts) -> [batches, experts];
    prior, true_loads: [batches, experts]. Ties go to the larger token share, then to "soft".
    """
    if true_loads.shape[0] == 0:
        return "soft", 1.0
    best: tuple[float, float, str] | None = None
    for mode, loads in token_loads.items():
        token_frac = load_fractions(loads)
        for w in BLEND_WEIGHTS:
            error = load_metrics(w * token_frac + (1 - w) * prior, true_loads)["load_tvd"]
            key = (round(error, 12), -float(w), mode)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2], -best[1]


def blended_loads(token_loads: np.ndarray, prior: np.ndarray, blend_weight: float) -> np.ndarray:
    """moeless batch load estimate. token_loads, prior: [batches, experts] -> fractions [batches, experts]."""
    return blend_weight * load_fractions(token_loads) + (1 - blend_weight) * prior


def score_layer(
    true_topk: np.ndarray,
    token_topk: dict[str, np.ndarray],
    batch_loads: dict[str, np.ndarray],
    true_loads: np.ndarray,
) -> dict[str, dict[str, float | None]]:
    """All metrics of every method on one layer.

    true_topk: [tokens, k]; token_topk: method -> [tokens, k] predicted ids (token methods only);
    batch_loads: method -> [batches, experts] predicted loads; true_loads: [batches, experts].
    """
    scores: dict[str, dict[str, float | None]] = {}
    for method, loads in batch_loads.items():
        recall = topk_recall(token_topk[method], true_topk) if method in token_topk else None
        scores[method] = {"topk_recall": recall, **load_metrics(loads, true_loads)}
    return scores


def summarise(layers: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean of each method's metrics over layer entries (skipping metrics a method lacks)."""
    summary: dict[str, dict[str, float | None]] = {}
    for entry in layers:
        for method, metrics in entry["methods"].items():
            for metric, value in metrics.items():
                summary.setdefault(method, {}).setdefault(metric, [])  # type: ignore[arg-type]
                if value is not None and not np.isnan(value):
                    summary[method][metric].append(value)  # type: ignore[union-attr]
    return {
        method: {metric: (float(np.mean(v)) if v else None) for metric, v in metrics.items()}  # type: ignore[arg-type]
        for method, metrics in summary.items()
    }
