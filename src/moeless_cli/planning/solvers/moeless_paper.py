"""The MoEless paper's greedy: Algorithm 1 (scale) and Algorithm 2 (place), equal token split.

Scale: one replica per expert; while the coefficient of variation (std / mean) of the per-replica
loads is above V and a replica is still allowed, add one to the expert with the most load per
replica. Place: heaviest replica first; keep it on a GPU its expert was on in the previous plan
(warm function) if that GPU has a free slot, else join the shortest queue (least-loaded GPU).
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan, PlanningProblem


def scale_replicas(load: np.ndarray, cv_threshold: float, max_replicas: int) -> np.ndarray:
    """Algorithm 1. load: [experts]. Returns replica counts [experts]."""
    counts = np.ones(load.size, dtype=np.int64)
    while counts.sum() < max_replicas:
        per_replica = np.repeat(load / counts, counts)  # [replicas]
        mean = per_replica.mean()
        if mean <= 0 or per_replica.std() / mean <= cv_threshold:
            break
        counts[int(np.argmax(load / counts))] += 1
    return counts


def place_replicas(
    load: np.ndarray, counts: np.ndarray, num_gpus: int, slots: int, previous: LayerPlan | None
) -> np.ndarray:
    """Algorithm 2. load, counts: [experts]. Returns the GPU of each replica, replicas ordered by
    expert then replica rank: [sum(counts)]."""
    experts = np.repeat(np.arange(load.size), counts)  # [replicas]
    per_replica = (load / counts)[experts]
    gpu_of = np.full(experts.size, -1, dtype=np.int64)
    gpu_load = np.zeros(num_gpus)
    used = np.zeros(num_gpus, dtype=np.int64)
    warm: dict[int, list[int]] = {}
    if previous is not None:
        for e, g in zip(previous.expert.tolist(), previous.gpu.tolist()):
            warm.setdefault(e, []).append(g)
    holds = [set() for _ in range(load.size)]
    for r in np.argsort(-per_replica, kind="stable").tolist():
        e = int(experts[r])
        g = next((g for g in warm.get(e, []) if used[g] < slots and g not in holds[e]), None)
        if g is None:
            free = np.flatnonzero(used < slots)
            fresh = [f for f in free.tolist() if f not in holds[e]]
            pool = np.array(fresh) if fresh else free
            g = int(pool[np.argmin(gpu_load[pool])])
        gpu_of[r] = g
        gpu_load[g] += per_replica[r]
        used[g] += 1
        holds[e].add(g)
    return gpu_of


def moeless_paper_layer(
    load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float
) -> LayerPlan:
    """load: [experts]. Equal split across each expert's replicas."""
    num_experts = load.size
    counts = scale_replicas(load, problem.cv_threshold, problem.max_replicas(num_experts))
    gpu = place_replicas(load, counts, problem.num_gpus, problem.slots_for(num_experts), previous)
    experts = np.repeat(np.arange(num_experts, dtype=np.int64), counts)
    return LayerPlan(experts, gpu, 1.0 / counts[experts])
