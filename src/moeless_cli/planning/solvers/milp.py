"""The integer program (PuLP): replica counts, placement and token shares of one layer together.

Variables, with loads scaled so that total / G == 1:
    x[e, g] in {0, 1}   expert e has a replica on GPU g
    y[e, g] >= 0        tokens of e served on g (shares are y / load)
    z                   the busiest GPU's tokens
    min  z + lam * sum x + mu * sum price[e, g] * x[e, g]
    s.t. sum_g y[e, g] = load[e];  y[e, g] <= load[e] * x[e, g];  sum_g x[e, g] >= 1
         sum_e x[e, g] <= slots;   sum x <= max_replicas;         sum_e y[e, g] <= z
lam and mu are small enough that all replica and move terms together are worth under 1e-4 of z,
so the objective is lexicographic up to that tolerance. Its LP relaxation equals total / G (x may
be fractional y / load), so the useful bounds come from `bounds.py` and from CBC's proof.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from moeless_cli.planning.plan import LayerPlan

SECONDARY_WEIGHT = 1e-4  # all replica + move terms together stay below this fraction of z


@dataclass
class MilpOutcome:
    layer: LayerPlan | None  # None when the solver found no incumbent
    proven: bool  # sol_status 1: optimal for the weighted objective
    z_bound: float  # proven lower bound on max GPU tokens (0 if not proven)


def lp_variable(prob, name: str, **kwargs):
    """PuLP 3.3 prefers prob.add_variable; older versions only have LpVariable."""
    import pulp

    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, **kwargs)
    return pulp.LpVariable(name, **kwargs)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """HiGHS prints a banner on fd 1 even with msg=False; keep stdout clean for --json."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


Variables = dict[tuple[int, int], Any]  # (expert, gpu) -> PuLP variable


def _formulate(w: np.ndarray, num_gpus: int, slots: int, max_replicas: int, price: np.ndarray):
    """The program for scaled loads w: [experts] (total / G == 1); price: [experts, G].
    Returns (problem, x, y, z) as in the module docstring."""
    import pulp

    num_experts = w.size
    lam = SECONDARY_WEIGHT / (2 * max_replicas)
    mu = SECONDARY_WEIGHT / (2 * max_replicas * max(float(price.max()), 1e-12))
    prob = pulp.LpProblem("moeless_layer", pulp.LpMinimize)
    E, G = range(num_experts), range(num_gpus)
    x = {(e, g): lp_variable(prob, f"x_{e}_{g}", cat="Binary") for e in E for g in G}
    y = {(e, g): lp_variable(prob, f"y_{e}_{g}", lowBound=0) for e in E for g in G}
    z = lp_variable(prob, "z", lowBound=0)
    prob += z + lam * pulp.lpSum(x.values()) + mu * pulp.lpSum(
        float(price[e, g]) * x[e, g] for e in E for g in G if price[e, g] > 0
    )
    for e in E:
        prob += pulp.lpSum(y[e, g] for g in G) == float(w[e])
        prob += pulp.lpSum(x[e, g] for g in G) >= 1
        for g in G:
            prob += y[e, g] <= float(w[e]) * x[e, g]
    for g in G:
        prob += pulp.lpSum(x[e, g] for e in E) <= slots
        prob += pulp.lpSum(y[e, g] for e in E) <= z
    prob += pulp.lpSum(x.values()) <= max_replicas
    return prob, x, y, z


def _warm_start(x: Variables, y: Variables, z, warm: LayerPlan, w: np.ndarray, num_gpus: int) -> None:
    """Start the solver from `warm` (the greedy plan) for scaled loads w: [experts]."""
    tokens = np.zeros((w.size, num_gpus))
    np.add.at(tokens, (warm.expert, warm.gpu), warm.share * w[warm.expert])
    held = np.zeros((w.size, num_gpus), dtype=bool)
    held[warm.expert, warm.gpu] = True
    for (e, g), var in x.items():
        var.setInitialValue(1 if held[e, g] else 0)
        y[e, g].setInitialValue(float(tokens[e, g]))
    z.setInitialValue(float(tokens.sum(0).max()))


def _run_solver(prob, backend: str, time_limit_s: float) -> None:
    """Solve with HiGHS or the bundled CBC (warm-started, one thread), quietly."""
    import pulp

    limit = max(1, int(round(time_limit_s)))
    if backend == "highs":
        solver = pulp.HiGHS(msg=False, timeLimit=limit)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, warmStart=True, timeLimit=limit, threads=1)
    with _stdout_to_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PULP_CBC_CMD is the bundled CBC in PuLP 3
        prob.solve(solver)


def _read_plan(x: Variables, y: Variables, w: np.ndarray, price: np.ndarray, num_gpus: int) -> LayerPlan:
    """The solved replicas and shares for scaled loads w: [experts]; price: [experts, G]."""
    pieces_e, pieces_g, pieces_t = [], [], []
    for e in range(w.size):
        placed = [(g, max(0.0, y[e, g].value() or 0.0)) for g in range(num_gpus) if (x[e, g].value() or 0.0) > 0.5]
        if w[e] > 0:
            placed = [(g, t) for g, t in placed if t > 1e-9 * w[e]]
        if not placed:  # idle expert keeps one replica (cheapest place), or a tiny numerical remainder
            placed = [(int(np.argmin(price[e])), 0.0)]
        total = sum(t for _, t in placed)
        for g, t in placed:
            pieces_e.append(e)
            pieces_g.append(g)
            pieces_t.append(t / total if total > 0 else 1.0 / len(placed))
    return LayerPlan.from_lists(pieces_e, pieces_g, pieces_t)


def solve_milp(
    load: np.ndarray,
    num_gpus: int,
    slots: int,
    max_replicas: int,
    price: np.ndarray,
    warm: LayerPlan,
    time_limit_s: float,
    backend: str = "cbc",
) -> MilpOutcome:
    """load: [experts]; price: [experts, G] move price (0 = already there); warm: starting plan."""
    import pulp

    scale = float(load.sum()) / num_gpus or 1.0
    w = load / scale  # [experts], total / G == 1
    prob, x, y, z = _formulate(w, num_gpus, slots, max_replicas, price)
    _warm_start(x, y, z, warm, w, num_gpus)
    _run_solver(prob, backend, time_limit_s)
    if prob.sol_status not in (1, 2):
        return MilpOutcome(None, False, 0.0)
    layer = _read_plan(x, y, w, price, num_gpus)
    proven = prob.sol_status == 1
    bound = (pulp.value(prob.objective) - SECONDARY_WEIGHT) * scale if proven else 0.0
    return MilpOutcome(layer, proven, max(0.0, bound))
