"""GPUs and the links between them, as a networkx graph; prices weight moves across links."""

from __future__ import annotations

import networkx as nx
import numpy as np

from moeless_cli.planning.plan import LayerPlan


def build_topology(
    num_gpus: int, num_nodes: int = 1, intra_node_gbps: float = 450.0, inter_node_gbps: float = 50.0
) -> nx.Graph:
    """A complete graph over GPUs 0..G-1; edge `gbps` is the link bandwidth, node attr `node`.

    GPUs are split into `num_nodes` equal consecutive blocks (GPU g is on node g // (G / N)).
    """
    assert num_gpus % num_nodes == 0, "GPUs must split evenly into nodes"
    per_node = num_gpus // num_nodes
    graph = nx.Graph(num_nodes=num_nodes)
    for g in range(num_gpus):
        graph.add_node(g, node=g // per_node)
    for a in range(num_gpus):
        for b in range(a + 1, num_gpus):
            same = graph.nodes[a]["node"] == graph.nodes[b]["node"]
            graph.add_edge(a, b, gbps=intra_node_gbps if same else inter_node_gbps)
    return graph


def pair_seconds_per_gb(graph: nx.Graph) -> np.ndarray:
    """Returns [G, G] seconds to copy one GB from GPU a to GPU b (0 on the diagonal)."""
    num_gpus = graph.number_of_nodes()
    cost = np.zeros((num_gpus, num_gpus))
    for a, b, data in graph.edges(data=True):
        cost[a, b] = cost[b, a] = 1.0 / data["gbps"]
    return cost


def move_cost(
    new: LayerPlan, old: LayerPlan | None, pair_cost: np.ndarray, expert_gb: float
) -> tuple[int, float]:
    """Weights to load for `new` given that `old` is resident.

    A new replica of expert e on GPU g is free if e was already on g; otherwise it is copied from the
    closest GPU that held e (cost pair_cost[src, g] * expert_gb seconds). pair_cost: [G, G].
    Returns (replicas that must be loaded, transfer seconds).
    """
    if old is None:
        return 0, 0.0
    held: dict[int, set[int]] = {}
    for e, g in zip(old.expert.tolist(), old.gpu.tolist()):
        held.setdefault(e, set()).add(g)
    moved, seconds = 0, 0.0
    for e, g in set(zip(new.expert.tolist(), new.gpu.tolist())):
        sources = held.get(e, set())
        if g in sources:
            continue
        moved += 1
        if sources:
            seconds += min(pair_cost[s, g] for s in sources) * expert_gb
    return moved, seconds


def move_price(old: LayerPlan | None, pair_cost: np.ndarray, num_experts: int) -> np.ndarray:
    """Returns [experts, G] relative price of placing expert e on GPU g given `old` is resident.

    0 where e is already on g; the cheapest link's seconds-per-GB from a GPU holding e otherwise;
    the slowest link's price when e was nowhere (a cold load from host memory).
    """
    num_gpus = pair_cost.shape[0]
    price = np.zeros((num_experts, num_gpus))
    if old is None:
        return price
    cold = float(pair_cost.max()) if pair_cost.size else 1.0
    price[:] = cold
    for e in range(num_experts):
        sources = old.gpu[old.expert == e]
        if sources.size:
            price[e] = pair_cost[sources].min(axis=0)
            price[e, sources] = 0.0
    return price
