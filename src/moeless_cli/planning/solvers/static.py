"""Static expert parallelism (Megatron-LM): expert e on GPU e mod G, one replica, no rebalancing."""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan, PlanningProblem


def static_layer(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float) -> LayerPlan:
    """load: [experts]. Placement ignores the load."""
    experts = np.arange(load.size, dtype=np.int64)
    return LayerPlan(experts, experts % problem.num_gpus, np.ones(load.size))
