"""Solver registry: name -> pure function (load [layers, experts], problem) -> SolveResult.

Every solver plans one layer at a time through the same driver, which validates the problem,
splits the time limit across layers, and (in joint mode) first hands out per-layer budgets.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Callable, Optional

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.planning.bounds import is_optimal, max_load_lower_bound
from moeless_cli.planning.plan import LayerInfo, LayerPlan, Plan, PlanningProblem, SolveResult
from moeless_cli.planning.solvers.eplb import eplb_layer
from moeless_cli.planning.solvers.ilp import ilp_layer_with_info
from moeless_cli.planning.solvers.moeless_paper import moeless_paper_layer
from moeless_cli.planning.solvers.static import static_layer
from moeless_cli.planning.slot_map import even_split_layer
from moeless_cli.planning.topology import build_topology, pair_seconds_per_gb

LayerFn = Callable[[np.ndarray, PlanningProblem, Optional[LayerPlan], float], LayerPlan]
ProgressFn = Callable[[int], None]  # called with the layer index after each layer
SolverFn = Callable[..., SolveResult]


def validate_problem(load: np.ndarray, problem: PlanningProblem) -> None:
    """Reject inputs no solver can plan, with an actionable message."""
    if load.ndim != 2 or load.shape[0] == 0 or load.shape[1] == 0:
        raise MoelessError(f"loads must be a non-empty [layers, experts] matrix, got shape {load.shape}")
    if not np.all(np.isfinite(load)) or (load < 0).any():
        raise MoelessError("loads must be finite and non-negative")
    num_layers, num_experts = load.shape
    G, N = problem.num_gpus, problem.num_nodes
    if G < 1 or N < 1 or G % N != 0:
        raise MoelessError(f"--gpus ({G}) must be a positive multiple of --nodes ({N})")
    slots = problem.slots_for(num_experts)
    if G * slots < num_experts:
        raise MoelessError(
            f"{num_experts} experts do not fit in {G} GPUs x {slots} slots per layer: "
            f"{num_experts - G * slots} more slots needed (at least {math.ceil(num_experts / G)} per GPU)"
        )
    budget = problem.replica_budget
    if budget is not None:
        need = num_experts * (num_layers if problem.joint else 1)
        if budget < need:
            raise MoelessError(f"--replica-budget {budget} is below the {need} replicas needed (one per expert)")
    prev = problem.previous
    if prev is not None and (prev.num_gpus != G or prev.num_experts != num_experts or prev.num_layers != num_layers):
        raise MoelessError(
            f"--previous-plan has {prev.num_layers} layers x {prev.num_experts} experts on {prev.num_gpus} GPUs; "
            f"the loads need {num_layers} x {num_experts} on {G}"
        )


def _solve(layer_fn: LayerFn | None, name: str, load: np.ndarray, problem: PlanningProblem,
           on_layer: ProgressFn | None = None) -> SolveResult:
    """load: [layers, experts]. layer_fn None means the ilp path (which reports its own info)."""
    from moeless_cli.planning.joint import layer_problems

    load = np.asarray(load, dtype=np.float64)
    validate_problem(load, problem)
    start = time.perf_counter()
    deadline = start + problem.time_limit_s
    pair_cost = pair_seconds_per_gb(
        build_topology(problem.num_gpus, problem.num_nodes, problem.intra_node_gbps, problem.inter_node_gbps)
    )
    problems = layer_problems(load, problem) if problem.joint else [problem] * load.shape[0]
    layers, infos = [], []
    for i, row in enumerate(load):
        sub = problems[i]
        previous = problem.previous.layers[i] if problem.previous is not None else None
        seconds = max(0.0, deadline - time.perf_counter()) / (load.shape[0] - i)
        t0 = time.perf_counter()
        if layer_fn is None:
            layer, info = ilp_layer_with_info(row, sub, previous, seconds, pair_cost)
        else:
            layer = layer_fn(row, sub, previous, seconds)
            peak = float(layer.gpu_loads(row, problem.num_gpus).max())
            bound = min(peak, max_load_lower_bound(row, problem.num_gpus, sub.max_replicas(row.size)))
            status = "optimal" if is_optimal(peak, bound, problem.balance_tolerance) else "heuristic"
            info = LayerInfo(peak, bound, status, time.perf_counter() - t0, name)
        layers.append(layer)
        infos.append(info)
        if on_layer is not None:
            on_layer(i)
    return SolveResult(Plan(problem.num_gpus, load.shape[1], layers), infos)


SOLVERS: dict[str, SolverFn] = {
    "ilp": functools.partial(_solve, None, "ilp"),
    "eplb": functools.partial(_solve, eplb_layer, "eplb"),
    "moeless-paper": functools.partial(_solve, moeless_paper_layer, "moeless-paper"),
    "static": functools.partial(_solve, static_layer, "static"),
    "even-split": functools.partial(_solve, even_split_layer, "even-split"),
}


def solve(name: str, load: np.ndarray, problem: PlanningProblem, on_layer: ProgressFn | None = None) -> SolveResult:
    """Run solver `name` on load: [layers, experts]."""
    require_choice("solver", name, SOLVERS)
    return SOLVERS[name](load, problem, on_layer)


__all__ = ["SOLVERS", "solve", "validate_problem"]
