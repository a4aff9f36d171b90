"""Joint mode: share one replica budget and one GPU memory budget across all layers.

The MoE time of a step is the sum over layers of the busiest GPU's load, so an extra replica is
worth most in the layer whose straggler it shortens most. Starting from one replica per expert,
replicas are handed out by best marginal gain per replica (looking up to G replicas ahead, since
slots come in rows of G); each layer is then solved on its own with the budget it received.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.planning.plan import PlanningProblem
from moeless_cli.planning.solvers.greedy import pack_and_split, pieces_to_layer, water_fill_candidates


def _greedy_peak(load: np.ndarray, num_gpus: int, replicas: int) -> float:
    """Best greedy max GPU load for one layer with at most `replicas` replicas. load: [experts]."""
    slots = math.ceil(replicas / num_gpus)
    plans = [pieces_to_layer(p, load) for p in water_fill_candidates(load, num_gpus, slots)]
    plans = [p for p in plans if p.num_replicas <= replicas]
    plans.append(pieces_to_layer(pack_and_split(load, num_gpus, slots, replicas), load))
    return min(float(p.gpu_loads(load, num_gpus).max()) for p in plans)


def allocate_replicas(load: np.ndarray, num_gpus: int, total_replicas: int, total_slots_per_gpu: int) -> list[int]:
    """load: [layers, experts]. Returns replicas per layer, summing to <= total_replicas, with
    sum of ceil(replicas / G) <= total_slots_per_gpu."""
    num_layers, num_experts = load.shape
    counts = [num_experts] * num_layers
    ceiling = num_experts + num_gpus - 1  # enough for perfect balance with unequal shares

    @lru_cache(maxsize=None)
    def peak(layer: int, replicas: int) -> float:
        return _greedy_peak(load[layer], num_gpus, replicas)

    def slots_total(c: list[int]) -> int:
        return sum(math.ceil(r / num_gpus) for r in c)

    while sum(counts) < total_replicas:
        best = None  # (gain per replica, layer, step)
        for layer in range(num_layers):
            for step in range(1, num_gpus + 1):
                r = counts[layer] + step
                if r > ceiling or sum(counts) + step > total_replicas:
                    break
                trial = counts[:layer] + [r] + counts[layer + 1 :]
                if slots_total(trial) > total_slots_per_gpu:
                    break
                gain = (peak(layer, counts[layer]) - peak(layer, r)) / step
                if gain > 1e-12 and (best is None or gain > best[0]):
                    best = (gain, layer, step)
        if best is None:
            break
        counts[best[1]] += best[2]
    return counts


def layer_problems(load: np.ndarray, problem: PlanningProblem) -> list[PlanningProblem]:
    """Per-layer problems whose budgets respect the global replica and memory budgets."""
    num_layers, num_experts = load.shape
    G = problem.num_gpus
    total_slots = problem.total_slots_per_gpu
    if total_slots is None:
        total_slots = num_layers * problem.slots_for(num_experts)
    if total_slots < num_layers * math.ceil(num_experts / G):
        missing = num_layers * math.ceil(num_experts / G) - total_slots
        raise MoelessError(f"joint plan needs {missing} more expert slots per GPU to hold every expert once")
    total_replicas = problem.replica_budget if problem.replica_budget is not None else G * total_slots
    counts = allocate_replicas(load, G, total_replicas, total_slots)
    return [
        replace(
            problem,
            joint=False,
            slots_per_gpu=max(math.ceil(num_experts / G), math.ceil(r / G)),
            replica_budget=r,
        )
        for r in counts
    ]
