"""moeless with one part removed at a time, on the same batches: what each part is worth.

Variants (each replays static EP's iteration sequence, like the main comparison):
- moeless: everything (the plan with spares, the predictor's forecasts, the device split, the plan's
  extra replicas serverless);
- no predictor: pre-warming and the split's preference order from the layer's last load;
- no spares: the ilp plan alone, no spare replicas;
- no placement: static EP's placement to start from (one replica per expert, e mod G), no plan;
- no balancing: the split always in the forecast's proportions (`shares`), never balanced on the
  true counts;
- pinned plan: the whole plan pinned (no scale-in of its extra replicas in lulls).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from moeless_cli.planning.plan import Plan
    from moeless_cli.sim.routing import RecordedRouting
    from moeless_cli.sim.simulator import SimConfig, Step
    from moeless_cli.sim.timemodel import ClusterModel

VARIANTS: dict[str, tuple[tuple[str, Any], ...]] = {  # name -> PolicySetting overrides
    "moeless": (),
    "no predictor": (),
    "no spares": (),
    "no placement": (("static_start", True),),
    "no balancing": (("dispatch_mode", "shares"),),
    "pinned plan": (("pin", "plan"),),
}


def ablate(cluster: ClusterModel, routing: RecordedRouting, schedule: list[Step], config: SimConfig, predictor: Any,
           plan: Plan, plan_without_spares: Plan,
           on_variant: Callable[[str, int, int], None] | None = None) -> list[dict[str, Any]]:
    """One row per variant: mean and p99 MoE-layer ms, live GB·s, cold starts, and the mean over the full
    system's (`vs_moeless`: > 1 means removing the part made moeless slower)."""
    from moeless_cli.sim.simulator import replay_costs

    rows = []
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        if on_variant is not None:
            on_variant(name, i, len(VARIANTS))
        variant_config = dataclasses.replace(config, policy_overrides=overrides)
        run = replay_costs("moeless", cluster, routing, schedule, variant_config,
                           None if name == "no predictor" else predictor,
                           plan_without_spares if name == "no spares" else plan)
        times = np.asarray(run["moe_layer_s"]) * 1e3
        rows.append({"variant": name, "moe_layer_ms": float(times.mean()) if times.size else 0.0,
                     "moe_layer_p99_ms": float(np.percentile(times, 99)) if times.size else 0.0,
                     "gbs_live": float(run["gbs_live"]), "cold_starts": int(run["cold_starts"])})
    full = rows[0]["moe_layer_ms"]
    for row in rows:
        row["vs_moeless"] = row["moe_layer_ms"] / full if full > 0 else None
    return rows


def ablation_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """The ablation as a markdown section (empty without rows)."""
    if not rows:
        return []
    lines = ["## moeless ablation (same batches)", "",
             "| variant | MoE ms mean | p99 | / moeless | live GB·s | cold starts |", "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "—" if row["vs_moeless"] is None else f"{row['vs_moeless']:.3f}"
        lines.append(f"| {row['variant']} | {row['moe_layer_ms']:.3f} | {row['moe_layer_p99_ms']:.3f} | {ratio} | "
                     f"{row['gbs_live']:.0f} | {row['cold_starts']} |")
    return lines + [""]
