"""Best token shares for a fixed placement: a max-flow, binary-searched on the busiest GPU's load.

Given which GPUs hold replicas of which experts, moving tokens between an expert's replicas can
only help; the least achievable max GPU load T is the smallest T for which the flow
source -> expert e (capacity load[e]) -> GPUs holding e -> sink (capacity T per GPU) carries
every token. Used to polish greedy plans (chains of split experts pass load along).
"""

from __future__ import annotations

import networkx as nx
from networkx.algorithms.flow import boykov_kolmogorov
import numpy as np

from moeless_cli.planning.plan import LayerPlan

RESOLUTION = 10**7  # integer flow units per mean GPU load (flows are exact in integers)
ITERATIONS = 24  # binary-search steps on T


def _network(placed: dict[int, set[int]], units: np.ndarray, num_gpus: int) -> nx.DiGraph:
    graph = nx.DiGraph()
    for e, gpus in placed.items():
        graph.add_edge("s", ("e", e), capacity=int(units[e]))
        for g in gpus:
            graph.add_edge(("e", e), ("g", g), capacity=int(units[e]))
    for g in range(num_gpus):
        graph.add_edge(("g", g), "t", capacity=0)
    return graph


def _flow(graph: nx.DiGraph, num_gpus: int, cap: int) -> tuple[int, dict]:
    for g in range(num_gpus):
        graph[("g", g)]["t"]["capacity"] = cap
    return nx.maximum_flow(graph, "s", "t", flow_func=boykov_kolmogorov)  # fastest here on these graphs


def rebalance_shares(layer: LayerPlan, load: np.ndarray, num_gpus: int, bound: float = 0.0) -> LayerPlan:
    """load: [experts]; bound: known lower bound on the max GPU load. Same replicas (those left
    with no tokens are dropped), shares chosen to minimise the largest GPU load."""
    mean = float(load.sum()) / num_gpus
    counts = layer.replica_counts(load.size)
    if mean <= 0 or counts.max() < 2:
        return layer
    units = np.round(load / mean * RESOLUTION).astype(np.int64)  # [experts]
    total = int(units.sum())
    placed: dict[int, set[int]] = {}
    for e, g in zip(layer.expert.tolist(), layer.gpu.tolist()):
        placed.setdefault(e, set()).add(g)
    current = np.bincount(layer.gpu, weights=layer.share * units[layer.expert], minlength=num_gpus)
    low = max(RESOLUTION, int(bound / mean * RESOLUTION)) - 1  # nothing below the bound is feasible
    high = int(np.ceil(current.max())) + 1  # the current shares are feasible
    graph = _network(placed, units, num_gpus)
    best = None
    for _ in range(ITERATIONS):
        if high - low <= 1:
            break
        mid = (low + high) // 2
        value, flow = _flow(graph, num_gpus, mid)
        if value >= total:
            high, best = mid, flow
        else:
            low = mid
    if best is None:
        return layer
    expert, gpu, share = [], [], []
    for e, gpus in placed.items():
        sent = {g: best[("e", e)][("g", g)] for g in gpus}
        kept = {g: f for g, f in sent.items() if f > 0} or {min(gpus): 1}
        whole = sum(kept.values())
        for g, f in sorted(kept.items()):
            expert.append(e)
            gpu.append(g)
            share.append(f / whole)
    return LayerPlan.from_lists(expert, gpu, share)
