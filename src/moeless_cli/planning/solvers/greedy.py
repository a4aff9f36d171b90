"""Fast unequal-share heuristics: water-filling and heaviest-first packing with splits.

Both return one layer's replicas as (expert, gpu, tokens) triples; shares are tokens / load.
They are the warm start and the fallback of the ILP, so `ilp` is never worse than them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from moeless_cli.planning.plan import LayerPlan

Pieces = list[tuple[int, int, float]]  # (expert, gpu, tokens)


def pieces_to_layer(pieces: Pieces, load: np.ndarray) -> LayerPlan:
    """Merge pieces of the same (expert, gpu) and turn tokens into shares. load: [experts]."""
    merged: dict[tuple[int, int], float] = {}
    for e, g, tokens in pieces:
        merged[(e, g)] = merged.get((e, g), 0.0) + tokens
    keys = sorted(merged)
    expert = np.array([e for e, _ in keys], dtype=np.int64)
    gpu = np.array([g for _, g in keys], dtype=np.int64)
    tokens = np.array([merged[k] for k in keys])
    per_expert = np.bincount(expert, weights=tokens, minlength=load.size)  # [experts]
    counts = np.bincount(expert, minlength=load.size)
    share = np.where(per_expert[expert] > 0, tokens / np.maximum(per_expert[expert], 1e-300), 1.0 / counts[expert])
    return LayerPlan(expert, gpu, share)


def _water_fill(load: np.ndarray, num_gpus: int, slots: int, quota: Callable[[int, int], int]) -> Pieces | None:
    """Fill GPUs one after another to total/G, splitting at most one expert per GPU boundary.

    Each GPU first takes a carried-over part of the previous split expert, then up to
    quota(items_left, gpus_left) whole light experts, then heavy experts, splitting the last one.
    load: [experts]. Returns None when some GPU would need more than `slots` pieces.
    """
    target = float(load.sum()) / num_gpus
    order = [int(e) for e in np.argsort(-load, kind="stable")]  # heaviest first
    left = {e: float(load[e]) for e in order}
    hi, lo = 0, len(order) - 1  # next heavy, next light (indices into order)
    pieces: Pieces = []
    eps = 1e-12 * max(target, 1.0)
    for g in range(num_gpus):
        last = g == num_gpus - 1
        cap, used = (float("inf") if last else target), 0
        if hi <= lo and left[order[hi]] < load[order[hi]]:  # carried-over split expert
            e = order[hi]
            take = min(left[e], cap)
            pieces.append((e, g, take))
            cap, used, left[e] = cap - take, used + 1, left[e] - take
            if left[e] <= eps:
                hi += 1
        lights = quota(lo - hi + 1, num_gpus - g)
        while lights > 0 and hi < lo and used < slots - 1 and left[order[lo]] <= cap:
            e = order[lo]
            pieces.append((e, g, left[e]))
            cap, used, lights, lo = cap - left[e], used + 1, lights - 1, lo - 1
        while hi <= lo and cap > eps and (used < slots or last):
            e = order[hi]
            take = min(left[e], cap)
            pieces.append((e, g, take))
            cap, used, left[e] = cap - take, used + 1, left[e] - take
            if left[e] <= eps:
                hi += 1
        if used > slots:
            return None
    if hi <= lo:
        return None
    return pieces


def water_fill_candidates(load: np.ndarray, num_gpus: int, slots: int) -> list[Pieces]:
    """Water-filling under a few light-expert quotas; each candidate uses <= E + G - 1 replicas."""
    quotas = (
        lambda items, gpus: slots - 2,
        lambda items, gpus: -(-items // gpus) - 1,
        lambda items, gpus: items // gpus - 1,
        lambda items, gpus: 0,
    )
    out = []
    for quota in quotas:
        pieces = _water_fill(load, num_gpus, slots, quota)
        if pieces is not None:
            out.append(pieces)
    return out


def pack_and_split(load: np.ndarray, num_gpus: int, slots: int, max_replicas: int) -> Pieces:
    """Heaviest-first packing of whole experts, then split the busiest GPU's work while replicas last.

    load: [experts]; needs E <= G * slots. Always feasible.
    """
    num_experts = load.size
    gpu_load = np.zeros(num_gpus)
    used = np.zeros(num_gpus, dtype=np.int64)
    tokens: dict[tuple[int, int], float] = {}
    for e in np.argsort(-load, kind="stable").tolist():
        free = np.flatnonzero(used < slots)
        g = int(free[np.argmin(gpu_load[free])])
        tokens[(e, g)] = float(load[e])
        gpu_load[g] += load[e]
        used[g] += 1
    replicas = num_experts
    for _ in range(4 * (num_gpus * slots)):
        hot = int(np.argmax(gpu_load))
        on_hot = [(t, e) for (e, g), t in tokens.items() if g == hot and t > 0]
        if not on_hot:
            break
        # Prefer moving work to a GPU already holding the expert (no new replica).
        best = None
        for t, e in on_hot:
            for (e2, g2), _ in tokens.items():
                if e2 == e and g2 != hot and (best is None or gpu_load[g2] < gpu_load[best[1]]):
                    best = (e, g2, t)
        if best is None or gpu_load[best[1]] >= gpu_load[hot] - 1e-9:
            free = np.flatnonzero((used < slots) & (np.arange(num_gpus) != hot))
            if replicas >= max_replicas or free.size == 0:
                if best is None:
                    break
            else:
                cold = int(free[np.argmin(gpu_load[free])])
                t, e = max(on_hot)
                if best is None or gpu_load[cold] < gpu_load[best[1]]:
                    best = (e, cold, t)
        e, dst, t = best
        delta = min(t, (gpu_load[hot] - gpu_load[dst]) / 2)
        if delta <= 1e-9 * max(gpu_load[hot], 1.0):
            break
        if (e, dst) not in tokens:
            tokens[(e, dst)] = 0.0
            used[dst] += 1
            replicas += 1
        tokens[(e, hot)] -= delta
        tokens[(e, dst)] += delta
        gpu_load[hot] -= delta
        gpu_load[dst] += delta
    return [(e, g, t) for (e, g), t in tokens.items() if t > 0 or load[e] == 0]
