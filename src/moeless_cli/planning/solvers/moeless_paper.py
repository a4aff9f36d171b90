"""The MoEless paper's greedy: Algorithm 1 (scale) and Algorithm 2 (place), equal token split.

Scale: one replica per expert; while the coefficient of variation (std / mean) of the per-replica
loads is above V and a replica is still allowed, add one to the expert with the most load per
replica. Place: heaviest replica first; keep it on a GPU its expert was on in the previous plan
(warm function) if that GPU has a free slot, else join the shortest queue (least-loaded GPU).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from moeless_cli.planning.plan import LayerPlan, PlanningProblem


def scale_replicas(load: np.ndarray, cv_threshold: float, max_replicas: int) -> np.ndarray:
    """Algorithm 1. load: [experts]. Returns replica counts [experts].

    The CV is kept incrementally: the per-replica loads always sum to sum(load), and their squares
    to sum_e load_e^2 / counts_e, so each added replica costs O(log E), not a pass over all replicas.
    """
    loads = [float(x) for x in load]
    counts = [1] * len(loads)
    total, squares, n = sum(loads), sum(x * x for x in loads), len(loads)
    heap = [(-x, e) for e, x in enumerate(loads)]  # (-(load per replica), expert): ties to the lowest expert
    heapq.heapify(heap)
    while n < max_replicas and total > 0:
        mean = total / n
        if math.sqrt(max(squares / n - mean * mean, 0.0)) / mean <= cv_threshold:
            break
        _, e = heapq.heappop(heap)
        squares -= loads[e] * loads[e] / counts[e] - loads[e] * loads[e] / (counts[e] + 1)
        counts[e] += 1
        n += 1
        heapq.heappush(heap, (-loads[e] / counts[e], e))
    return np.asarray(counts, dtype=np.int64)


def place_replicas(
    load: np.ndarray, counts: np.ndarray, num_gpus: int, slots: int, previous: LayerPlan | None
) -> np.ndarray:
    """Algorithm 2. load, counts: [experts]. Returns the GPU of each replica, replicas ordered by
    expert then replica rank: [sum(counts)]."""
    experts = np.repeat(np.arange(load.size), counts)  # [replicas]
    per_replica = (load / counts)[experts]
    gpu_of = [-1] * experts.size
    gpu_load = [0.0] * num_gpus
    used = [0] * num_gpus
    warm: dict[int, list[int]] = {}
    if previous is not None:
        for e, g in zip(previous.expert.tolist(), previous.gpu.tolist()):
            warm.setdefault(e, []).append(g)
    holds = [set() for _ in range(load.size)]
    expert_of, share = experts.tolist(), per_replica.tolist()
    for r in np.argsort(-per_replica, kind="stable").tolist():
        e = expert_of[r]
        g = next((g for g in warm.get(e, []) if used[g] < slots and g not in holds[e]), None)
        if g is None:
            free = [f for f in range(num_gpus) if used[f] < slots]
            fresh = [f for f in free if f not in holds[e]]
            g = min(fresh or free, key=gpu_load.__getitem__)  # shortest queue; ties to the lowest GPU
        gpu_of[r] = g
        gpu_load[g] += share[r]
        used[g] += 1
        holds[e].add(g)
    return np.asarray(gpu_of, dtype=np.int64)


def moeless_paper_layer(
    load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float
) -> LayerPlan:
    """load: [experts]. Equal split across each expert's replicas."""
    num_experts = load.size
    counts = scale_replicas(load, problem.cv_threshold, problem.max_replicas(num_experts))
    gpu = place_replicas(load, counts, problem.num_gpus, problem.slots_for(num_experts), previous)
    experts = np.repeat(np.arange(num_experts, dtype=np.int64), counts)
    return LayerPlan(experts, gpu, 1.0 / counts[experts])
