"""Plan quality, per layer: GPU loads, imbalance, replicas, weights moved, time and cost.

Time and cost follow the MoEless paper's model (alpha: compute seconds per token on one replica,
beta: communication seconds per token through one GPU):
    T_layer = alpha * max_replica_tokens + 2 * beta * max_gpu_tokens
    C_layer = T_layer * (replicas * expert_gb)        # GB·s, memory x time
The paper splits an expert's tokens equally, so its replica load is W/R; here a replica serves
share * W, which is the same when shares are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.planning.plan import LayerPlan, Plan
from moeless_cli.planning.topology import move_cost


@dataclass
class CostModel:
    """Coefficients of the paper's time/cost model (illustrative defaults; calibrate per system)."""

    alpha_s_per_token: float = 1e-6  # expert compute time per token on one replica
    beta_s_per_token: float = 2e-7  # all-to-all time per token through one GPU (each way)
    expert_gb: float = 0.0  # GB of one expert's weights (memory term of the cost)


@dataclass
class LayerMetrics:
    gpu_loads: np.ndarray  # [G] tokens each GPU serves
    imbalance: float  # max / mean GPU load; 1.0 is perfect
    replicas: int  # replicas (function instances) alive in this layer
    moved: int  # replicas whose weights must be loaded vs the previous plan
    move_seconds: float  # transfer time of those weights over the topology
    time_s: float  # MoE-layer time under the alpha/beta model
    cost_gbs: float  # memory x time of this layer's replicas, GB·s


def imbalance(gpu_loads: np.ndarray) -> float:
    """gpu_loads: [G]. max/mean; 1.0 for an idle layer."""
    mean = float(gpu_loads.mean())
    return float(gpu_loads.max()) / mean if mean > 0 else 1.0


def static_gpu_loads(load: np.ndarray, num_gpus: int) -> np.ndarray:
    """load: [experts]. GPU loads of static expert parallelism (expert e on GPU e mod G): [G]."""
    return np.bincount(np.arange(load.size) % num_gpus, weights=load, minlength=num_gpus)


def layer_metrics(
    layer: LayerPlan,
    load: np.ndarray,
    num_gpus: int,
    model: CostModel | None = None,
    previous: LayerPlan | None = None,
    pair_cost: np.ndarray | None = None,
) -> LayerMetrics:
    """load: [experts] tokens of this layer; pair_cost: [G, G] seconds per GB (for moves)."""
    model = model or CostModel()
    gpu_loads = layer.gpu_loads(load, num_gpus)
    replica_tokens = layer.share * load[layer.expert]  # [replicas]
    time_s = model.alpha_s_per_token * float(replica_tokens.max(initial=0.0)) + 2 * model.beta_s_per_token * float(
        gpu_loads.max()
    )
    if pair_cost is None:
        pair_cost = np.zeros((num_gpus, num_gpus))
    moved, move_s = move_cost(layer, previous, pair_cost, model.expert_gb)
    return LayerMetrics(
        gpu_loads=gpu_loads,
        imbalance=imbalance(gpu_loads),
        replicas=layer.num_replicas,
        moved=moved,
        move_seconds=move_s,
        time_s=time_s,
        cost_gbs=time_s * layer.num_replicas * model.expert_gb,
    )


def plan_metrics(
    plan: Plan,
    load: np.ndarray,
    model: CostModel | None = None,
    previous: Plan | None = None,
    pair_cost: np.ndarray | None = None,
) -> list[LayerMetrics]:
    """load: [layers, experts]. One LayerMetrics per layer."""
    return [
        layer_metrics(
            layer, load[i], plan.num_gpus, model, previous.layers[i] if previous is not None else None, pair_cost
        )
        for i, layer in enumerate(plan.layers)
    ]
