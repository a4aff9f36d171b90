"""Policies that follow a given plan exactly, outside the registry: its replicas pinned and warm
throughout, tokens by the plan's shares or `balanced_split` over its replicas, no online state. For
tests and the throughput benchmark, where the split must be controlled. Routing is never changed,
only which replica serves a token.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.policies import Dispatch, OnlinePolicy, PolicySetting, balanced_over
from moeless_cli.planning.plan import LayerPlan, Plan


class FixedPlanPolicy(OnlinePolicy):
    """`setting.plan`'s replicas warm throughout; tokens follow the plan's shares."""

    name = "fixed-plan"

    def initial_plan(self, layer: int) -> LayerPlan:
        return self.setting.plan.layers[layer]


class BalancedPlanPolicy(FixedPlanPolicy):
    """`setting.plan`'s replicas; each layer's whole tokens balanced over GPUs once the true load is known."""

    name = "fixed-plan-balanced"
    decision_on_host = True

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        plan = self.plans[layer]
        load = np.asarray(true_load, dtype=np.float64)
        return self._finish(layer, plan.expert, plan.gpu, balanced_over(plan, load, self.setting), now, load)


def fixed_plan_policy(plan: Plan, balanced: bool = False) -> OnlinePolicy:
    """A started policy that follows `plan` exactly: its replicas pinned, tokens by the plan's shares
    (balanced: `balanced_split` over the plan's replicas)."""
    slots = max(int(layer.slots_used(plan.num_gpus).max()) for layer in plan.layers)
    setting = PolicySetting(num_layers=plan.num_layers, num_experts=plan.num_experts, num_gpus=plan.num_gpus,
                            slots_per_gpu=slots, history=np.ones((plan.num_layers, plan.num_experts)), plan=plan)
    pool = FunctionPool(plan.num_gpus, expert_bytes=0.0, keep_alive_s=0.0)
    policy = (BalancedPlanPolicy if balanced else FixedPlanPolicy)(setting, pool)
    policy.start(0.0)
    return policy
