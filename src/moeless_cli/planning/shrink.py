"""Re-plan onto the GPUs that are left when one fails (serve's dist recovery).

Replicas on the lost GPU go: an expert that keeps other replicas gives their shares the lost one's
tokens (shares renormalised to 1), and an expert left with none gets one replica, share 1, on the
surviving GPU that holds the fewest replicas of the layer (lowest id on ties). GPUs above the lost
one are renumbered down by one.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan, Plan


def drop_gpu(plan: Plan, lost: int) -> Plan:
    """The plan for the G - 1 GPUs left when GPU `lost` fails (G >= 2)."""
    assert plan.num_gpus >= 2 and 0 <= lost < plan.num_gpus, "a GPU of the plan must be left"
    layers = [_drop_gpu_layer(layer, lost, plan.num_gpus - 1, plan.num_experts) for layer in plan.layers]
    return Plan(num_gpus=plan.num_gpus - 1, num_experts=plan.num_experts, layers=layers)


def _drop_gpu_layer(layer: LayerPlan, lost: int, num_gpus: int, num_experts: int) -> LayerPlan:
    """layer's replicas without GPU `lost`; num_gpus: the GPUs left."""
    keep = layer.gpu != lost
    expert, gpu, share = layer.expert[keep], layer.gpu[keep], layer.share[keep]
    gpu = gpu - (gpu > lost)
    totals = np.bincount(expert, weights=share, minlength=num_experts)  # [experts] surviving share
    counts = np.bincount(expert, minlength=num_experts)  # [experts] surviving replicas
    share = np.where(totals[expert] > 0, share / np.where(totals[expert] > 0, totals[expert], 1.0),
                     1.0 / np.maximum(counts[expert], 1))
    held = np.bincount(gpu, minlength=num_gpus)  # [gpus] replicas each surviving GPU holds
    orphans = np.flatnonzero(counts == 0)
    new_gpu = []
    for _ in orphans:
        target = int(np.argmin(held))
        new_gpu.append(target)
        held[target] += 1
    return LayerPlan(np.concatenate([expert, orphans]).astype(np.int64),
                     np.concatenate([gpu, np.asarray(new_gpu, dtype=np.int64)]).astype(np.int64),
                     np.concatenate([share, np.ones(orphans.size)]).astype(np.float64))
