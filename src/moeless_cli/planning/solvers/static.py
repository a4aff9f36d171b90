"""Static expert parallelism (Megatron-LM): expert e on GPU e mod G, one replica, no rebalancing."""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan, Plan, PlanningProblem


def static_placement(num_experts: int, num_gpus: int) -> LayerPlan:
    """Expert e on GPU e mod G, one replica each, its whole load."""
    experts = np.arange(num_experts, dtype=np.int64)
    return LayerPlan(experts, experts % num_gpus, np.ones(num_experts))


def static_plan(num_layers: int, num_experts: int, num_gpus: int) -> Plan:
    """Megatron-style expert parallelism on every layer: expert e on GPU e mod G, one replica each."""
    return Plan(num_gpus, num_experts, [static_placement(num_experts, num_gpus) for _ in range(num_layers)])


def static_layer(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float) -> LayerPlan:
    """load: [experts]. Placement ignores the load."""
    return static_placement(load.size, problem.num_gpus)
