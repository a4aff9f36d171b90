"""Cost-aware dispatch: the whole-token split of one layer under the cost the simulator charges.

The physical time model (`sim/timemodel.py`) charges a replica that serves t > 0 whole tokens
f(t) = max(entry, tile * ceil(t / tile)) in token units (entry = its weight read in tokens of compute,
tile = the GEMM's row tile), and nothing when t = 0; a GPU runs its used replicas one after another
and the layer waits for the busiest GPU. `balanced_split` optimises a linear stand-in (t + entry per
used replica), which smears small experts over replicas and ignores tiles; here the step cost itself
is minimised: a small decode batch stays on few replicas (a second replica costs a whole weight read)
while a large prefill batch spreads in whole tiles.

`cost_aware_split` starts from the better of two splits under f (every expert whole on one replica,
heaviest first onto the replica whose GPU ends cheapest; and `balanced_split`) and improves it by
local search on whole tokens: the busiest GPU hands part or all of one expert's piece to another
replica of that expert, the amount chosen to even the two GPUs (both sides are monotone in it),
accepted only when the larger of the two GPUs drops strictly (the sorted GPU costs fall
lexicographically, so it terminates). `exact_split_cost` is the integer program over the same
replicas, the reference for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.dispatch import balanced_split

EPS = 1e-9


def replica_costs(tokens: np.ndarray, entry_tokens: float, tile_tokens: int) -> np.ndarray:
    """tokens: [replicas] whole tokens each serves. Each replica's cost in token units: [replicas]
    (max(entry, tile * ceil(t / tile)) for t > 0, 0 for an idle replica)."""
    tiles = np.ceil(np.asarray(tokens, dtype=np.float64) / tile_tokens) * tile_tokens
    return np.where(tokens > 0, np.maximum(entry_tokens, tiles), 0.0)


def busiest_cost(gpu: np.ndarray, tokens: np.ndarray, num_gpus: int, entry_tokens: float,
                 tile_tokens: int) -> float:
    """gpu, tokens: [replicas]. The busiest GPU's cost (sum of its replicas' costs) in token units."""
    work = np.bincount(gpu, weights=replica_costs(tokens, entry_tokens, tile_tokens), minlength=num_gpus)
    return float(work.max(initial=0.0))


class _StepCostSplit:
    """Whole tokens per replica with their step costs and each GPU's total, changed by moves.

    counts: [replicas] tokens; expert_of, gpu_of: [replicas]; work: [num_gpus] sum of f over used replicas.
    """

    def __init__(self, counts: list[int], expert_of: list[int], gpu_of: list[int], num_gpus: int,
                 entry: float, tile: int):
        self.counts, self.expert_of, self.gpu_of, self.entry, self.tile = counts, expert_of, gpu_of, entry, tile
        self.replicas_of: dict[int, list[int]] = {}
        self.on_gpu: list[list[int]] = [[] for _ in range(num_gpus)]
        for r, e in enumerate(expert_of):
            self.replicas_of.setdefault(e, []).append(r)
            self.on_gpu[gpu_of[r]].append(r)
        self.cost = [self.f(c) for c in counts]
        self.work = [0.0] * num_gpus
        for r, c in enumerate(self.cost):
            self.work[gpu_of[r]] += c

    def f(self, t: int) -> float:
        """The replica cost of t whole tokens (module docstring)."""
        return 0.0 if t <= 0 else max(self.entry, float(self.tile * -(-t // self.tile)))

    def cap(self, level: float) -> int:
        """The most tokens a replica serves at cost <= level (0 below one tile or one weight read)."""
        return 0 if level < self.entry - EPS else self.tile * int((level + EPS) // self.tile)

    def pair_move(self, r: int, r2: int) -> tuple[float, int]:
        """The best part a in 1..counts[r] to hand from replica r to r2 (same expert, other GPU):
        (larger of the two GPUs' costs after it, a); the sides are monotone in a, so a binary search
        finds where they cross, and on a plateau the side that does not rise takes as much as is free."""
        c1, c2 = self.counts[r], self.counts[r2]
        g, h = self.gpu_of[r], self.gpu_of[r2]
        base_g, base_h = self.work[g] - self.cost[r], self.work[h] - self.cost[r2]
        if base_h + self.f(c2 + 1) >= self.work[g] - EPS:  # h ends no lower than g is now
            return float("inf"), 0
        if base_g + self.f(0) > base_h + self.f(c2 + c1):  # g stays the larger side: hand everything
            return base_g, c1
        lo, hi = 1, c1  # smallest a with g's side <= h's side
        while lo < hi:
            mid = (lo + hi) // 2
            if base_g + self.f(c1 - mid) <= base_h + self.f(c2 + mid):
                hi = mid
            else:
                lo = mid + 1
        rise = base_h + self.f(c2 + lo)
        if lo > 1 and base_g + self.f(c1 - lo + 1) < rise:  # one less keeps g the larger, lower side
            keep = min(c1 - 1, self.cap(self.f(c1 - lo + 1)))  # as few as that level of g allows
            return base_g + self.f(c1 - lo + 1), c1 - keep
        return rise, min(c1, self.cap(self.f(c2 + lo)) - c2)

    def best_move(self, g: int) -> tuple[float, int, int, int]:
        """The move off GPU g that lowers the larger of its two GPUs most: (that cost, giver, taker, tokens);
        taker -1 when no move lowers it."""
        best = (self.work[g] - EPS, -1, -1, 0)
        for r in self.on_gpu[g]:
            if not self.counts[r]:
                continue
            for r2 in self.replicas_of[self.expert_of[r]]:
                if self.gpu_of[r2] == g:
                    continue
                peak, amount = self.pair_move(r, r2)
                if peak < best[0]:
                    best = (peak, r, r2, amount)
        return best

    def move_into(self, r: int, delta: int) -> None:
        """Add delta (may be negative) tokens to replica r, updating its cost and its GPU's."""
        self.counts[r] += delta
        cost = self.f(self.counts[r])
        self.work[self.gpu_of[r]] += cost - self.cost[r]
        self.cost[r] = cost

    def move(self, r: int, r2: int, amount: int) -> None:
        """Hand `amount` tokens from replica r to r2 (same expert)."""
        self.move_into(r, -amount)
        self.move_into(r2, amount)

    def lowest_level(self, load: int, bases: list[float]) -> float:
        """The least level L with sum over replicas of cap(L - base) >= load (bases: [replicas] the
        other replicas' cost on each one's GPU); a bisection on the monotone step function."""
        lo, hi = min(bases), max(bases) + self.f(load)
        while hi - lo > 1e-7 * max(1.0, hi):
            mid = (lo + hi) / 2
            if sum(self.cap(mid - b) for b in bases) >= load:
                hi = mid
            else:
                lo = mid
        return hi

    def repour(self, e: int, ceiling: float) -> bool:
        """Lift expert e out and pour it again at the lowest level its replicas allow, fewest replicas
        (largest room first); kept only when every GPU it touches ends below `ceiling`."""
        rs = self.replicas_of[e]
        gpus = [self.gpu_of[r] for r in rs]
        if len(set(gpus)) < len(rs):  # two replicas on one GPU: pair moves only
            return False
        load = sum(self.counts[r] for r in rs)
        bases = [self.work[g] - self.cost[r] for r, g in zip(rs, gpus)]
        level = self.lowest_level(load, bases)
        rooms = sorted(((self.cap(level - b), r) for r, b in zip(rs, bases)), reverse=True)
        counts, left = {}, load
        for room, r in rooms:
            counts[r], left = min(room, left), left - min(room, left)
        if max(b + self.f(counts[r]) for r, b in zip(rs, bases)) >= ceiling - EPS:
            return False
        for r in rs:
            delta = counts[r] - self.counts[r]
            if delta:
                self.move_into(r, delta)
        return True

    def _trade_amounts(self, r: int, r2: int) -> set[int]:
        """Candidate tokens to hand from replica r to r2 in a trade: all, r's part tile, what lowers r's
        cost one step, r2's free room."""
        c1 = self.counts[r]
        room = self.cap(self.cost[r2] or self.f(1)) - self.counts[r2]
        step_down = c1 - self.cap(self.cost[r] - 1e-6)
        return {a for a in (c1, c1 % self.tile, step_down, min(c1, room)) if a > 0}

    def trade(self, g: int) -> bool:
        """Swap parts of two experts between the busiest GPU g and another GPU h (e from g to h, e' from
        h to g): partial tiles on both sides can merge into whole ones. Kept when both end below g."""
        best = (self.work[g] - EPS, ())
        for r in self.on_gpu[g]:
            for r2 in self.replicas_of[self.expert_of[r]] if self.counts[r] else ():
                h = self.gpu_of[r2]
                for r3 in self.on_gpu[h] if h != g else ():
                    for r4 in self.replicas_of[self.expert_of[r3]] if self.counts[r3] and r3 != r2 else ():
                        if self.gpu_of[r4] == g and r4 != r:
                            best = min(best, self._best_trade(g, h, (r, r2), (r3, r4)), key=lambda b: b[0])
        for r, r2, amount in best[1]:
            self.move(r, r2, amount)
        return bool(best[1])

    def _best_trade(self, g: int, h: int, out: tuple[int, int], back: tuple[int, int]):
        """(larger of g and h after, moves) of the best candidate trade of `out` (g to h) and `back`."""
        (r, r2), (r3, r4) = out, back
        best: tuple[float, tuple] = (float("inf"), ())
        for a in self._trade_amounts(r, r2):
            for b in self._trade_amounts(r3, r4):
                after_g = self.work[g] - self.cost[r] - self.cost[r4] + self.f(self.counts[r] - a) \
                    + self.f(self.counts[r4] + b)
                after_h = self.work[h] - self.cost[r2] - self.cost[r3] + self.f(self.counts[r2] + a) \
                    + self.f(self.counts[r3] - b)
                if max(after_g, after_h) < best[0]:
                    best = (max(after_g, after_h), ((r, r2, a), (r3, r4, b)))
        return best

    def chain(self, g: int) -> bool:
        """Make room first: a GPU h next to the busiest g hands part of another expert on to a third GPU
        k (which stays below g), after which g's best move lowers both g and its taker below g's cost;
        undone when no such move follows (an ejection chain of two moves)."""
        top = self.work[g]
        takers = {self.gpu_of[r2] for r in self.on_gpu[g] if self.counts[r] for r2 in self.replicas_of[self.expert_of[r]]}
        for h in sorted(takers - {g}):
            for r3 in self.on_gpu[h]:
                for r4 in self.replicas_of[self.expert_of[r3]] if self.counts[r3] else ():
                    k = self.gpu_of[r4]
                    if k in (g, h):
                        continue
                    for a in self._trade_amounts(r3, r4):
                        if self.work[k] - self.cost[r4] + self.f(self.counts[r4] + a) >= top - EPS:
                            continue
                        self.move(r3, r4, a)
                        _, r, r2, b = self.best_move(g)
                        if r2 >= 0:
                            self.move(r, r2, b)
                            return True
                        self.move(r4, r3, a)
        return False

    def improve(self, max_moves: int) -> None:
        """Local search: the busiest GPU's best move, while one lowers the larger of its two GPUs;
        when none does, re-pour one of its experts if that lowers every GPU it touches below it."""
        num_gpus = len(self.work)
        for _ in range(max_moves):
            g = max(range(num_gpus), key=self.work.__getitem__)
            _, r, r2, amount = self.best_move(g)
            if r2 >= 0:
                self.move(r, r2, amount)
                continue
            experts = {self.expert_of[r] for r in self.on_gpu[g] if self.counts[r]}
            if not any(self.repour(e, self.work[g]) for e in sorted(experts) if len(self.replicas_of[e]) > 1) \
                    and not self.trade(g) and not self.chain(g):
                return


def lpt_whole(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int, entry_tokens: float,
              tile_tokens: int) -> np.ndarray:
    """Every expert whole on one of its replicas, heaviest first onto the replica whose GPU ends cheapest
    (longest processing time first; the expert's cost is the same on every replica). expert, gpu: [replicas]; load: [experts] whole counts. Returns [replicas]."""
    replicas_of: dict[int, list[int]] = {}
    for r, e in enumerate(expert.tolist()):
        replicas_of.setdefault(e, []).append(r)
    gpu_of, loads = gpu.tolist(), load.tolist()
    cost = replica_costs(load, entry_tokens, tile_tokens).tolist()  # [experts] on whichever replica
    work, tokens = [0.0] * num_gpus, np.zeros(expert.size)
    for e in sorted((e for e in replicas_of if loads[e] > 0), key=loads.__getitem__, reverse=True):
        r = min(replicas_of[e], key=lambda r: work[gpu_of[r]])
        tokens[r] = loads[e]
        work[gpu_of[r]] += cost[e]
    return tokens


def cost_aware_split(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int,
                     entry_tokens: float, tile_tokens: int, max_moves: int = 10_000) -> np.ndarray:
    """Whole tokens per replica minimising the busiest GPU's step cost (module docstring).

    expert, gpu: [replicas] (every expert with load > 0 needs a replica); load: [experts] whole counts.
    Returns whole tokens per replica as float64 [replicas], summing to each expert's load.
    """
    hosted = np.zeros(load.size, dtype=bool)
    hosted[expert] = True
    missing = np.flatnonzero((load > 0) & ~hosted)
    if missing.size:
        raise ValueError(f"experts {missing[:5].tolist()} have load but no replica")
    starts = (lpt_whole(expert, gpu, load, num_gpus, entry_tokens, tile_tokens), balanced_split(expert, gpu, load, num_gpus, entry_tokens))
    start = min(starts, key=lambda t: busiest_cost(gpu, t, num_gpus, entry_tokens, tile_tokens))
    split = _StepCostSplit(np.rint(start).astype(np.int64).tolist(), expert.tolist(), gpu.tolist(), num_gpus,
                           float(entry_tokens), int(tile_tokens))
    split.improve(max_moves)
    return np.asarray(split.counts, dtype=np.float64)


def exact_split_cost(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int, entry_tokens: float,
                     tile_tokens: int, time_limit_s: float = 10.0) -> tuple[float, bool]:
    """The least busiest-GPU cost (token units) of any whole-token split over the given replicas, by HiGHS:
    y_r whole tokens, u_r used, m_r tiles, cost_r >= entry u_r, cost_r >= tile m_r, y_r <= tile m_r,
    y_r <= load_e u_r, sum of y over e's replicas = load_e, each GPU's sum of cost <= M; min M.
    A reference for tests and benchmarks. expert, gpu: [replicas]; load: [experts] whole counts.
    Returns (cost, proven optimal within the time limit); (inf, False) when no split was found."""
    import pulp

    from moeless_cli.planning.solvers.milp import _run_solver, lp_variable

    t = np.rint(load).astype(np.int64)
    prob = pulp.LpProblem("cost_split", pulp.LpMinimize)
    peak = lp_variable(prob, "peak", lowBound=0)
    prob += peak
    R = range(expert.size)
    y = [lp_variable(prob, f"y{r}", lowBound=0, upBound=int(t[expert[r]]), cat="Integer") for r in R]
    u = [lp_variable(prob, f"u{r}", cat="Binary") for r in R]
    m = [lp_variable(prob, f"m{r}", lowBound=0, cat="Integer") for r in R]
    cost = [lp_variable(prob, f"c{r}", lowBound=0) for r in R]
    for r in R:
        prob += cost[r] >= float(entry_tokens) * u[r]
        prob += cost[r] >= int(tile_tokens) * m[r]
        prob += y[r] <= int(tile_tokens) * m[r]
        prob += y[r] <= int(t[expert[r]]) * u[r]
    for e in range(load.size):
        prob += pulp.lpSum(y[r] for r in np.flatnonzero(expert == e)) == int(t[e])
    for g in range(num_gpus):
        prob += pulp.lpSum(cost[r] for r in np.flatnonzero(gpu == g)) <= peak
    _run_solver(prob, "highs", time_limit_s)
    if prob.sol_status not in (1, 2):
        return float("inf"), False
    return float(peak.value()), prob.sol_status == 1
