"""Fixed-plan policies for the runtime, with the interface of the shared `online/policies.py`.

`serve` itself uses the online registry (`moeless_cli.online.policies`); these two follow a given
plan exactly (its replicas, shares or water-filling over them) with no online state, for tests and
the throughput benchmark, where the split must be controlled. Routing is never changed: only
which replica of the chosen expert serves each token.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.dispatch import balanced_split, share_split
from moeless_cli.online.policies import Dispatch
from moeless_cli.planning.plan import LayerPlan, Plan
from moeless_cli.planning.solvers.static import static_placement


def static_plan(num_layers: int, num_experts: int, num_gpus: int) -> Plan:
    """Megatron-style expert parallelism: expert e on GPU e mod G, one replica each."""
    return Plan(num_gpus, num_experts, [static_placement(num_experts, num_gpus) for _ in range(num_layers)])


class PlanPolicy:
    """The plan's replicas are warm throughout; tokens follow the plan's shares."""

    lossy = False
    perfect_balance = False
    predictor_method = None

    def __init__(self, name: str, plan: Plan):
        self.name = name
        self.plan = plan

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        p = self.plan.layers[layer]
        return p.expert, p.gpu

    def split(self, p: LayerPlan, load: np.ndarray) -> np.ndarray:
        return share_split(p.expert, p.share, load)

    def dispatch(self, layer: int, true_load: np.ndarray, now: float = 0.0) -> Dispatch:
        p = self.plan.layers[layer]
        return Dispatch(p.expert, p.gpu, self.split(p, np.asarray(true_load, dtype=np.float64)), now)

    def observe(self, layer: int, true_load: np.ndarray) -> None:
        pass

    def end_iteration(self, now: float) -> None:
        pass


class RebalancingPolicy(PlanPolicy):
    """The plan's replicas; each layer's tokens balanced over GPUs once the true load is known."""

    def split(self, p: LayerPlan, load: np.ndarray) -> np.ndarray:
        return balanced_split(p.expert, p.gpu, load, self.plan.num_gpus)


def make_plan_policy(name: str, plan: Plan) -> PlanPolicy:
    """`moeless` re-balances at dispatch time; any other name follows the plan's shares."""
    return RebalancingPolicy(name, plan) if name == "moeless" else PlanPolicy(name, plan)
