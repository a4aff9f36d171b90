"""The exact least busiest-GPU expert time of one layer (placement and whole-token split together): an
integer program, to measure how tight `bounds.busiest_gpu_floor` is on small batches (far too slow
for every batch; `benchmarks/bound_gap.py`).

Variables, per loaded expert e and GPU g: u[e, g] in {0, 1} (a replica of e on g serves tokens),
y[e, g] whole tokens of e on g, and the replica's cost c[e, g]; M the busiest GPU's cost.
    min M  s.t.  sum_g y[e, g] = t_e;  y[e, g] <= t_e u[e, g];  sum_e u[e, g] <= S;  sum u <= R;
                 sum_e c[e, g] <= M.
One replica per (e, g) loses nothing: two on one GPU cost at least one serving both (f subadditive).
The cost is f(y) exactly at the optimum: c = a u + b y when f is affine for y >= 1 (compute,
roofline); otherwise f's steps v_1 < ... < v_J on 1..t_e, c = v_1 u + sum_{j>1} (v_j - v_{j-1}) d_j
with binaries d_j and y <= cap(v_{j-1}) + t_e d_j (y past a step's cap switches the step on).
Idle experts take no slot here (they need none to be lossless), as in the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.planning.bounds import ReplicaCost


@dataclass(frozen=True)
class ExactOutcome:
    seconds: float  # the best busiest-GPU expert time found (inf when none)
    proven: bool  # solved to optimality within the time limit


def _affine(f_table: np.ndarray, most: int) -> tuple[float, float] | None:
    """(a, b) when f(y) = a + b y for 1 <= y <= most, else None. f_table: [tokens + 1] f(0..tokens)."""
    f = f_table[1:most + 1]
    b = float(f[1] - f[0]) if f.size > 1 else 0.0
    a = float(f[0]) - b
    return (a, b) if np.allclose(f, a + b * np.arange(1, f.size + 1), rtol=1e-12, atol=0.0) else None


def _replica_cost(prob, name: str, u, y, t: int, f_table: np.ndarray):
    """c[e, g] as a PuLP expression of u, y for an expert with t tokens (module docstring);
    f_table: [tokens + 1] f(0..tokens)."""
    import pulp

    from moeless_cli.planning.solvers.milp import lp_variable

    affine = _affine(f_table, t)
    if affine is not None:
        return affine[0] * u + affine[1] * y
    levels = np.unique(f_table[1:t + 1])
    caps = np.searchsorted(f_table, levels, side="right") - 1
    steps = []
    for j in range(1, levels.size):
        d = lp_variable(prob, f"{name}_d{j}", cat="Binary")
        prob += y <= int(caps[j - 1]) + t * d
        steps.append(float(levels[j] - levels[j - 1]) * d)
    return float(levels[0]) * u + pulp.lpSum(steps)


def exact_busiest_gpu(load: np.ndarray, cost: ReplicaCost, num_gpus: int, slots: int, max_replicas: int,
                      floor: float = 0.0, time_limit_s: float = 10.0, backend: str = "highs") -> ExactOutcome:
    """load: [experts] whole loads of one layer. The least busiest-GPU expert time of any lossless
    placement and whole-token split (module docstring), by HiGHS or CBC within the time limit (proven:
    within the solver's relative gap, 1e-4). floor: a proven lower bound (e.g. `bounds.busiest_gpu_floor`),
    given to the solver as a cut. Costs are in units of f(1) inside the program (seconds are ~1e-6)."""
    import pulp

    from moeless_cli.planning.solvers.milp import _run_solver, lp_variable

    t = np.rint(load).astype(np.int64)
    experts, G = np.flatnonzero(t > 0).tolist(), range(num_gpus)
    if not experts:
        return ExactOutcome(0.0, True)
    prob = pulp.LpProblem("lossless_floor", pulp.LpMinimize)
    peak = lp_variable(prob, "peak", lowBound=0)
    prob += peak
    u = {(e, g): lp_variable(prob, f"u_{e}_{g}", cat="Binary") for e in experts for g in G}
    y = {(e, g): lp_variable(prob, f"y_{e}_{g}", lowBound=0, cat="Integer") for e in experts for g in G}
    for e in experts:
        prob += pulp.lpSum(y[e, g] for g in G) == int(t[e])
        for g in G:
            prob += y[e, g] <= int(t[e]) * u[e, g]
    unit = float(cost.seconds[1])
    f_table = cost.seconds / unit
    gpu_cost = [pulp.lpSum(_replica_cost(prob, f"c_{e}_{g}", u[e, g], y[e, g], int(t[e]), f_table) for e in experts)
                for g in G]
    for g in G:
        prob += pulp.lpSum(u[e, g] for e in experts) <= slots
        prob += gpu_cost[g] <= peak
    prob += peak >= floor / unit
    prob += pulp.lpSum(u.values()) <= max_replicas
    _run_solver(prob, backend, time_limit_s)
    if prob.sol_status not in (1, 2):
        return ExactOutcome(float("inf"), False)
    return ExactOutcome(float(peak.value()) * unit, prob.sol_status == 1)
