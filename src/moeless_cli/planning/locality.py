"""Function locality: relabel a plan's GPUs so that it keeps as many loaded replicas as possible.

Balance, slots and replica counts do not change when GPUs swap their whole replica sets, but the
weights that must be moved do. Choosing the relabelling is an assignment problem: new GPU block
b goes onto GPU g at cost sum over its experts of price[e, g] (0 where e is already on g).
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from moeless_cli.planning.plan import LayerPlan

EXACT_MAX_GPUS = 16  # exact matching (blossom, pure Python) up to here; greedy pairing above


def _block_costs(layer: LayerPlan, price: np.ndarray) -> np.ndarray:
    """price: [experts, G]. Returns [G blocks, G gpus] cost of putting block b's replicas on GPU g."""
    num_gpus = price.shape[1]
    cost = np.zeros((num_gpus, num_gpus))
    np.add.at(cost, layer.gpu, price[layer.expert])
    return cost


def align_gpus(layer: LayerPlan, price: np.ndarray) -> LayerPlan:
    """price: [experts, G] move price (0 = already there). Same plan with GPUs relabelled."""
    cost = _block_costs(layer, price)
    num_gpus = cost.shape[0]
    if not cost.any():
        return layer
    if num_gpus <= EXACT_MAX_GPUS:
        graph = nx.Graph()
        top = float(cost.max()) + 1.0
        for b in range(num_gpus):
            for g in range(num_gpus):
                graph.add_edge(("b", b), ("g", g), weight=top - cost[b, g])
        matching = nx.max_weight_matching(graph, maxcardinality=True)
        target = np.empty(num_gpus, dtype=np.int64)
        for u, v in matching:
            (_, b), (_, g) = (u, v) if u[0] == "b" else (v, u)
            target[b] = g
    else:
        target = np.full(num_gpus, -1, dtype=np.int64)
        taken = np.zeros(num_gpus, dtype=bool)
        for flat in np.argsort(cost, axis=None, kind="stable").tolist():
            b, g = divmod(flat, num_gpus)
            if target[b] < 0 and not taken[g]:
                target[b], taken[g] = g, True
    relabelled = LayerPlan(layer.expert, target[layer.gpu], layer.share)
    before = float(price[layer.expert, layer.gpu].sum())
    after = float(price[relabelled.expert, relabelled.gpu].sum())
    return relabelled if after < before else layer
