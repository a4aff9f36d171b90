"""`ilp`: best greedy plan first, then the integer program only where the greedy is not proven optimal.

Candidates: water-filling (perfect balance with E + G - 1 replicas when slots allow), packing with
splits, EPLB, the paper's greedy and static placement. The best by (max GPU load, replicas, moves)
warm-starts CBC, and CBC's answer is kept only if it is better, so ilp never loses to a greedy.
"""

from __future__ import annotations

import time

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.planning.bounds import is_optimal, max_load_lower_bound
from moeless_cli.planning.locality import align_gpus
from moeless_cli.planning.plan import LayerInfo, LayerPlan, PlanningProblem
from moeless_cli.planning.solvers.eplb import eplb_layer
from moeless_cli.planning.solvers.greedy import pack_and_split, pieces_to_layer, water_fill_candidates
from moeless_cli.planning.solvers.milp import solve_milp
from moeless_cli.planning.solvers.local_search import swap_improve
from moeless_cli.planning.solvers.moeless_paper import moeless_paper_layer
from moeless_cli.planning.solvers.shares import rebalance_shares
from moeless_cli.planning.solvers.static import static_layer
from moeless_cli.planning.topology import move_price

MIN_MILP_SECONDS = 0.5  # below this per-layer budget the greedy answer stands
# Above this many placement binaries CBC rarely improves a near-perfect greedy within seconds
# (measured: 256 experts x 64 GPUs, 1.8 s a layer, no improvement), so the greedy answer stands.
MAX_MILP_BINARIES = 8192
POLISHED_CANDIDATES = 2  # greedy placements improved by swaps and max-flow share polishing
POLISH_ROUNDS = 2  # swap + max-flow rounds per polished candidate


def _score(layer: LayerPlan, load: np.ndarray, num_gpus: int, price: np.ndarray) -> tuple[float, int, float]:
    """Lexicographic key: max GPU load (rounded to 1e-9 relative), replicas, move price."""
    peak = float(layer.gpu_loads(load, num_gpus).max())
    scale = max(float(load.sum()) / num_gpus, 1e-12)
    moves = float(price[layer.expert, layer.gpu].sum())
    return round(peak / scale, 9), layer.num_replicas, moves


def _feasible(layer: LayerPlan, num_gpus: int, slots: int, max_replicas: int) -> bool:
    return layer.num_replicas <= max_replicas and int(layer.slots_used(num_gpus).max()) <= slots


def greedy_candidates(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None) -> list[LayerPlan]:
    """Every feasible heuristic plan for one layer, or only the water-filling ones when one of
    them already meets the lower bound (and no previous plan asks for locality). load: [experts]."""
    num_experts, num_gpus = load.size, problem.num_gpus
    slots, max_replicas = problem.slots_for(num_experts), problem.max_replicas(num_experts)
    plans = [pieces_to_layer(p, load) for p in water_fill_candidates(load, num_gpus, slots)]
    plans = [p for p in plans if _feasible(p, num_gpus, slots, max_replicas)]
    bound = max_load_lower_bound(load, num_gpus, max_replicas)
    if previous is None and any(
        is_optimal(float(p.gpu_loads(load, num_gpus).max()), bound, problem.balance_tolerance) for p in plans
    ):
        return plans
    plans.append(pieces_to_layer(pack_and_split(load, num_gpus, slots, max_replicas), load))
    for layer_fn in (eplb_layer, moeless_paper_layer, static_layer):
        try:
            plans.append(layer_fn(load, problem, previous, 0.0))
        except MoelessError:  # e.g. EPLB needs a multiple of G replicas
            continue
    return [p for p in plans if _feasible(p, num_gpus, slots, max_replicas)]


def ilp_layer_with_info(
    load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float, pair_cost: np.ndarray
) -> tuple[LayerPlan, LayerInfo]:
    """load: [experts]; pair_cost: [G, G] seconds per GB; `seconds`: this layer's time budget."""
    start = time.perf_counter()
    num_experts, num_gpus = load.size, problem.num_gpus
    slots, max_replicas = problem.slots_for(num_experts), problem.max_replicas(num_experts)
    price = move_price(previous, pair_cost, num_experts)  # [experts, G]
    bound = max_load_lower_bound(load, num_gpus, max_replicas)
    candidates = greedy_candidates(load, problem, previous)
    if previous is not None:  # keep loaded replicas where they are (GPU relabelling is free)
        candidates = [align_gpus(p, price) for p in candidates]
    candidates.sort(key=lambda p: _score(p, load, num_gpus, price))
    best = candidates[0]
    peak = float(best.gpu_loads(load, num_gpus).max())
    if not is_optimal(peak, bound, problem.balance_tolerance):
        # Improve the best few candidates: swap replicas off the busiest GPU, then re-split
        # tokens over the placement (a max-flow); twice, since each step opens moves for the other.
        polished = []
        for plan in candidates[:POLISHED_CANDIDATES]:
            for _ in range(POLISH_ROUNDS):
                plan = rebalance_shares(swap_improve(plan, load, num_gpus, slots), load, num_gpus, bound)
                if is_optimal(float(plan.gpu_loads(load, num_gpus).max()), bound, problem.balance_tolerance):
                    break
            polished.append(plan)
        if previous is not None:
            polished = [align_gpus(p, price) for p in polished]
        best = min([best, *polished], key=lambda p: _score(p, load, num_gpus, price))
        peak = float(best.gpu_loads(load, num_gpus).max())
    method, status = "greedy", "heuristic"
    settled = is_optimal(peak, bound, problem.balance_tolerance) and previous is None
    small = num_experts * num_gpus <= MAX_MILP_BINARIES
    if not settled and small and seconds - (time.perf_counter() - start) >= MIN_MILP_SECONDS:
        budget = seconds - (time.perf_counter() - start)
        outcome = solve_milp(load, num_gpus, slots, max_replicas, price, best, budget, problem.backend)
        if outcome.proven:
            bound = max(bound, outcome.z_bound)
        if outcome.layer is not None and _feasible(outcome.layer, num_gpus, slots, max_replicas):
            if _score(outcome.layer, load, num_gpus, price) < _score(best, load, num_gpus, price):
                best, method = outcome.layer, f"{problem.backend}"
            elif outcome.proven:
                method = f"greedy+{problem.backend}"
        peak = float(best.gpu_loads(load, num_gpus).max())
        if outcome.proven:
            status = "optimal"
    if is_optimal(peak, bound, problem.balance_tolerance):
        status = "optimal"
    elif status != "optimal":
        status = "feasible" if method != "greedy" else "heuristic"
    info = LayerInfo(peak, min(bound, peak), status, time.perf_counter() - start, method)
    return best, info
