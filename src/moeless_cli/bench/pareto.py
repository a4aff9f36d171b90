"""Latency-memory Pareto: the replicating systems at several replica budgets per layer, on the same batches.

Memory points, in replicas per layer: E + 0, E + G/2, E + G, E + 2G, E + 4G, and all of memory
(G x slots per GPU). Points that memory caps to the same count run once, under all their labels.
At each point every system in `PARETO_SYSTEMS` replays the same window of static EP's iteration
sequence (`sim.simulator.replay_costs`) with that budget for all (`SimConfig.replicas_per_layer`):
- eplb, eplb+balanced: EPLB fills whole GPUs, so it places the largest multiple of G within the point;
- moeless-paper, moeless: scale (pre-warm, keep alive) up to the point; moeless pins the plan made
  for the point (`plan_for`: ilp with spares up to it, at most EPLB's default budget).
Each row: mean MoE-layer latency against live GB·s (memory of every live instance x its lifetime,
the headline bill), per-invocation GB·s, the replicas actually held on average, and whether no other
row is at least as fast and as cheap (`pareto_optimal`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from moeless_cli.planning.plan import Plan
    from moeless_cli.sim.routing import RecordedRouting
    from moeless_cli.sim.simulator import SimConfig, Step
    from moeless_cli.sim.timemodel import ClusterModel

PARETO_SYSTEMS = ("eplb", "eplb+balanced", "moeless-paper", "moeless")
OnPoint = Callable[[str, int, int], None]  # (what runs now, done, total)


@dataclass(frozen=True)
class MemoryPoint:
    label: str  # how the budget was asked for, e.g. "E+G/2", or "E+2G, E+4G, memory" when memory caps them alike
    replicas_per_layer: int  # the replica budget per layer every system gets


def memory_points(num_experts: int, num_gpus: int, slots_per_gpu: int) -> list[MemoryPoint]:
    """The sweep's budgets, ascending: E + {0, G/2, G, 2G, 4G} capped by memory, and memory itself."""
    memory = num_gpus * slots_per_gpu
    asked = [("E+0", num_experts), ("E+G/2", num_experts + num_gpus // 2), ("E+G", num_experts + num_gpus),
             ("E+2G", num_experts + 2 * num_gpus), ("E+4G", num_experts + 4 * num_gpus), ("memory", memory)]
    labels: dict[int, list[str]] = {}
    for label, replicas in asked:
        labels.setdefault(min(replicas, memory), []).append(label)
    return [MemoryPoint(", ".join(names), replicas) for replicas, names in sorted(labels.items())]


def sweep(cluster: ClusterModel, routing: RecordedRouting, schedule: list[Step], config: SimConfig, predictor: Any,
          plan_for: Callable[[int], Plan], on_point: OnPoint | None = None) -> list[dict[str, Any]]:
    """One row per (memory point, system) of `PARETO_SYSTEMS`, every system on `schedule`."""
    from moeless_cli.sim.simulator import replay_costs

    points = memory_points(routing.num_experts, cluster.num_gpus, cluster.slots_per_gpu())
    rows, total = [], len(points) * len(PARETO_SYSTEMS)
    for point in points:
        plan = plan_for(point.replicas_per_layer)
        point_config = dataclasses.replace(config, replicas_per_layer=point.replicas_per_layer)
        for name in PARETO_SYSTEMS:
            if on_point is not None:
                on_point(f"{name} at {point.label}", len(rows), total)
            run = replay_costs(name, cluster, routing, schedule, point_config, predictor, plan)
            layers = float(sum(routing.multiplicity))
            rows.append(_row(name, point, run, cluster.preset.expert_bytes / 1e9 * layers))
    return mark_pareto_optimal(rows)


def _row(name: str, point: MemoryPoint, run: dict[str, Any], layer_set_gb: float) -> dict[str, Any]:
    """One system at one point; layer_set_gb: GB of one replica in every layer (turns GB·s into replicas)."""
    times = run["moe_layer_s"]
    seconds = run["end_s"]
    return {
        "system": name, "memory": point.label, "replicas_per_layer": point.replicas_per_layer,
        "live_replicas_per_layer": run["gbs_live"] / (layer_set_gb * seconds) if seconds > 0 else 0.0,
        "moe_layer_ms": float(times.mean() * 1e3) if times.size else 0.0,
        "gbs_live": float(run["gbs_live"]), "gbs_per_invocation": float(run["gbs_per_invocation"]),
        "cold_starts": int(run["cold_starts"]),
    }


def mark_pareto_optimal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with "pareto_optimal": no other row is at least as fast and as cheap (live GB·s) and better in one."""
    def dominated(row: dict[str, Any]) -> bool:
        return any(o["moe_layer_ms"] <= row["moe_layer_ms"] and o["gbs_live"] <= row["gbs_live"]
                   and (o["moe_layer_ms"], o["gbs_live"]) != (row["moe_layer_ms"], row["gbs_live"]) for o in rows)

    return [row | {"pareto_optimal": not dominated(row)} for row in rows]
