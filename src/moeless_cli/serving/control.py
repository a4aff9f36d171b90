"""Plan-driven policies for the runtime, with the interface of the shared `online/policies.py`.

A policy answers, per MoE layer: `prepare(layer, predicted_load, now) -> (expert[r], gpu[r])`, the
replicas that must be warm; `dispatch(layer, true_load, now) -> Dispatch(expert, gpu, tokens)`,
tokens per replica once the gate has run; `observe(layer, true_load)`; `end_iteration(now)`.
Routing is never changed: only which replica of the chosen expert serves each token. These two
follow a fixed plan (`--plan`, or static EP) and are what `serve` uses when a policy needs no
online state (tests, benchmarks); the online registry is used otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.planning.plan import LayerPlan, Plan


@dataclass
class Dispatch:
    expert: np.ndarray  # [r] logical expert of each replica used
    gpu: np.ndarray  # [r] worker holding it
    tokens: np.ndarray  # [r] tokens it serves (may be fractional; rounded by `integer_counts`)


def integer_counts(expert: np.ndarray, tokens: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Round a fractional split to integers that sum exactly to each expert's load.

    expert, tokens: [replicas]; load: [experts] integer counts. Returns [replicas] int64.
    """
    totals = np.bincount(expert, weights=tokens, minlength=load.size)  # [experts]
    share = np.where(totals[expert] > 0, tokens / np.maximum(totals[expert], 1e-300), 0.0)
    first = np.zeros(expert.size, dtype=bool)
    first[np.unique(expert, return_index=True)[1]] = True
    share = np.where((totals[expert] <= 0) & first, 1.0, share)  # no tokens given: first replica takes them
    return split_by_shares(expert, share, np.asarray(load, dtype=np.int64))


def static_plan(num_layers: int, num_experts: int, num_gpus: int) -> Plan:
    """Megatron-style expert parallelism: expert e on GPU e mod G, one replica each."""
    experts = np.arange(num_experts, dtype=np.int64)
    layer = LayerPlan(experts, experts % num_gpus, np.ones(num_experts))
    return Plan(num_gpus, num_experts, [LayerPlan(layer.expert.copy(), layer.gpu.copy(), layer.share.copy())
                                        for _ in range(num_layers)])


def split_by_shares(expert: np.ndarray, share: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Integer tokens per replica following the shares (largest remainder per expert).

    expert, share: [replicas]; load: [experts] integer tokens. Returns [replicas] int64 summing per
    expert to its load.
    """
    exact = share * load[expert]  # [replicas]
    counts = np.floor(exact).astype(np.int64)
    short = load - np.bincount(expert, weights=counts, minlength=load.size).astype(np.int64)  # [experts]
    if short.any():
        order = np.lexsort((-(exact - counts), expert))  # by expert, biggest remainder first
        rank = np.empty_like(order)
        starts = np.searchsorted(expert[order], expert[order], side="left")
        rank[order] = np.arange(order.size) - starts
        counts += (rank < short[expert]).astype(np.int64)
    return counts


def water_fill(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int) -> np.ndarray:
    """Tokens per replica that level the GPUs: single-replica experts are fixed, then each
    replicated expert (heaviest first) fills its replicas' GPUs up to a common level.

    expert, gpu: [replicas]; load: [experts] integer tokens. Returns [replicas] int64.
    """
    counts = np.zeros(expert.size, dtype=np.int64)
    replicas_of = np.bincount(expert, minlength=load.size)  # [experts]
    single = replicas_of[expert] == 1
    counts[single] = load[expert[single]]
    gpu_load = np.bincount(gpu, weights=counts, minlength=num_gpus).astype(np.float64)  # [gpus]
    for e in np.argsort(-load, kind="stable"):
        if replicas_of[e] <= 1 or load[e] == 0:
            continue
        mine = np.flatnonzero(expert == e)
        levels = gpu_load[gpu[mine]]  # [r_e]
        order = np.argsort(levels, kind="stable")
        lv = levels[order]
        # Smallest level L with sum(max(0, L - lv)) >= load: fill the lowest GPUs first.
        prefix = np.cumsum(lv)
        target = float(load[e])
        for j in range(lv.size):
            level = (target + prefix[j]) / (j + 1)
            if j + 1 == lv.size or level <= lv[j + 1]:
                break
        give = np.maximum(0.0, level - lv)
        share = np.zeros(mine.size)
        share[order] = give / give.sum() if give.sum() > 0 else 1.0 / mine.size
        counts[mine] = split_by_shares(np.zeros(mine.size, dtype=np.int64), share, np.array([load[e]]))
        gpu_load += np.bincount(gpu[mine], weights=counts[mine], minlength=num_gpus)
    return counts


class PlanPolicy:
    """The plan's replicas stay warm; tokens follow the plan's shares (static, eplb plans)."""

    lossy = False

    def __init__(self, name: str, plan: Plan):
        self.name = name
        self.plan = plan

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        p = self.plan.layers[layer]
        return p.expert, p.gpu

    def dispatch(self, layer: int, true_load: np.ndarray, now: float = 0.0) -> Dispatch:
        p = self.plan.layers[layer]
        return Dispatch(p.expert, p.gpu, split_by_shares(p.expert, p.share, np.asarray(true_load, dtype=np.int64)))

    def observe(self, layer: int, true_load: np.ndarray) -> None:
        pass

    def end_iteration(self, now: float) -> None:
        pass


class RebalancingPolicy(PlanPolicy):
    """moeless dispatch: the plan's replicas, tokens re-balanced over GPUs once the true load is known."""

    def dispatch(self, layer: int, true_load: np.ndarray, now: float = 0.0) -> Dispatch:
        p = self.plan.layers[layer]
        return Dispatch(p.expert, p.gpu, water_fill(p.expert, p.gpu, np.asarray(true_load, dtype=np.int64),
                                                    self.plan.num_gpus))


def make_plan_policy(name: str, plan: Plan) -> PlanPolicy:
    """`moeless` re-balances at dispatch time; any other name follows the plan's shares."""
    return RebalancingPolicy(name, plan) if name == "moeless" else PlanPolicy(name, plan)
