"""Lower bounds on the busiest GPU's load, used to report optimality gaps."""

from __future__ import annotations

import numpy as np


def max_load_lower_bound(load: np.ndarray, num_gpus: int, max_replicas: int) -> float:
    """load: [experts] tokens of one layer. No plan with at most `max_replicas` replicas beats this.

    - total / G: someone carries at least the mean;
    - the heaviest expert can spread over at most min(G, 1 + max_replicas - E) GPUs
      (every other expert keeps one replica), so one of them carries its part.
    """
    num_experts = load.size
    total = float(load.sum())
    spread = max(1, min(num_gpus, 1 + max_replicas - num_experts))
    return max(total / num_gpus, float(load.max(initial=0.0)) / spread)


def is_optimal(max_load: float, bound: float, tolerance: float) -> bool:
    """True when max_load is within `tolerance` (relative) of the bound."""
    return max_load <= bound * (1.0 + tolerance) + 1e-12
