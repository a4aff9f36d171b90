"""Predictor accuracy metrics: pure numpy, no torch.

Two families, and every method is scored on the same inputs:
- token level: the predicted top-k expert ids of each token against the ids the router chose;
- batch level: predicted against actual per-expert load of each batch (one profiled iteration),
  compared as fractions of the batch's token-to-expert assignments.
"""

from __future__ import annotations

import numpy as np

STRAGGLER_SHARE = 0.1  # "stragglers" are the most-loaded 10% of a layer's experts (at least one)


def topk_recall(pred_topk: np.ndarray, true_topk: np.ndarray) -> float:
    """sum |pred ∩ true| / sum |true| over tokens.

    pred_topk: [tokens, k_pred] predicted expert ids; true_topk: [tokens, k] routed expert ids
    (distinct within a row). Returns nan for zero tokens.
    """
    if true_topk.size == 0:
        return float("nan")
    hits = (true_topk[:, :, None] == pred_topk[:, None, :]).any(axis=2)  # [tokens, k]
    return float(hits.sum() / true_topk.size)


def counts_from_topk(topk: np.ndarray, num_experts: int) -> np.ndarray:
    """Token-to-expert assignment counts. topk: [tokens, k] -> [experts] (float64)."""
    return np.bincount(topk.reshape(-1), minlength=num_experts).astype(np.float64)


def load_fractions(loads: np.ndarray) -> np.ndarray:
    """Normalise loads to fractions per row; an all-zero row becomes uniform.

    loads: [batches, experts] -> [batches, experts], each row summing to 1.
    """
    loads = np.clip(np.asarray(loads, dtype=np.float64), 0.0, None)
    totals = loads.sum(axis=-1, keepdims=True)
    uniform = np.full_like(loads, 1.0 / loads.shape[-1])
    return np.where(totals > 0, loads / np.where(totals > 0, totals, 1.0), uniform)


def load_tvd(pred_loads: np.ndarray, true_loads: np.ndarray) -> np.ndarray:
    """Total variation distance between load fractions, per batch.

    pred_loads, true_loads: [batches, experts] (any positive scale) -> [batches] in [0, 1].
    """
    return 0.5 * np.abs(load_fractions(pred_loads) - load_fractions(true_loads)).sum(axis=-1)


def load_pearson(pred_loads: np.ndarray, true_loads: np.ndarray) -> np.ndarray:
    """Pearson correlation of the per-expert loads, per batch.

    pred_loads, true_loads: [batches, experts] -> [batches] in [-1, 1]. A constant row (e.g. a
    uniform prior) carries no ranking information and scores 0.
    """
    p = pred_loads - pred_loads.mean(axis=-1, keepdims=True)
    t = true_loads - true_loads.mean(axis=-1, keepdims=True)
    denom = np.sqrt((p * p).sum(axis=-1) * (t * t).sum(axis=-1))
    return np.where(denom > 1e-12, (p * t).sum(axis=-1) / np.where(denom > 1e-12, denom, 1.0), 0.0)


def straggler_count(num_experts: int, share: float = STRAGGLER_SHARE) -> int:
    """How many experts count as stragglers: the top `share` of them, at least one."""
    return max(1, int(np.floor(share * num_experts + 0.5)))


def straggler_recall(pred_loads: np.ndarray, true_loads: np.ndarray, share: float = STRAGGLER_SHARE) -> np.ndarray:
    """Share of the truly most-loaded experts that the prediction also ranks most-loaded, per batch.

    pred_loads, true_loads: [batches, experts] -> [batches] in [0, 1]. Ties in the actual loads
    are broken by expert id (stable sort), ties in the prediction likewise.
    """
    n = straggler_count(true_loads.shape[-1], share)
    true_top = np.argsort(-true_loads, axis=-1, kind="stable")[:, :n]  # [batches, n]
    pred_top = np.argsort(-pred_loads, axis=-1, kind="stable")[:, :n]  # [batches, n]
    return (true_top[:, :, None] == pred_top[:, None, :]).any(axis=2).mean(axis=-1)


def load_metrics(pred_loads: np.ndarray, true_loads: np.ndarray) -> dict[str, float]:
    """Batch-level metrics averaged over batches. pred_loads, true_loads: [batches, experts]."""
    if true_loads.shape[0] == 0:
        return {"load_tvd": float("nan"), "pearson": float("nan"), "straggler_recall": float("nan")}
    return {
        "load_tvd": float(load_tvd(pred_loads, true_loads).mean()),
        "pearson": float(load_pearson(pred_loads, true_loads).mean()),
        "straggler_recall": float(straggler_recall(pred_loads, true_loads).mean()),
    }
