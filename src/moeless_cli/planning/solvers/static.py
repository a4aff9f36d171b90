"""Static expert parallelism (Megatron-LM): expert e on GPU e mod G, one replica, no rebalancing."""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan, PlanningProblem


def static_placement(num_experts: int, num_gpus: int) -> LayerPlan:
    """Expert e on GPU e mod G, one replica each, its whole load."""
    experts = np.arange(num_experts, dtype=np.int64)
    return LayerPlan(experts, experts % num_gpus, np.ones(num_experts))


def static_layer(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float) -> LayerPlan:
    """load: [experts]. Placement ignores the load."""
    return static_placement(load.size, problem.num_gpus)
