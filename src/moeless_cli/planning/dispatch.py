"""Dispatch: split each expert's tokens of one MoE layer over its warm replicas, after the gate.

Shared by the online policies (`online/policies.py`, at every layer call) and the offline planner
(`planning/spares.py` scores spare replicas by the split they allow), so it lives in planning.

One way per family of systems:
- `share_split`: a plan's fixed shares (static EP; EPLB's planner);
- `random_split`: each token to a pseudo-random replica of its expert, equal chances (EPLB as vLLM
  deploys it: equal shares in expectation, whatever the planner's shares were);
- `equal_split`: each expert's tokens evenly over its replicas (the MoEless paper, step 4);
- `water_fill`: minimise the busiest GPU's work given the true loads (moeless's first step).
  Experts are poured heaviest first into their replicas' GPUs, filling the emptiest GPU up to a
  common level (classic water-filling), after a first pass that puts each expert whole on its
  least-busy replica (LPT); then every expert is lifted out and poured again (Gauss-Seidel passes;
  within a few % of the LP optimum in `benchmarks/bench_dispatch.py`).
  Using a replica at all costs `entry_tokens` extra work (its weights must be streamed from HBM
  once), so a small expert is not smeared over many GPUs. Pure Python on short lists: ~0.3 ms for
  64 experts x 8 GPUs.
- `balanced_split` (moeless): `water_fill`, rounded to whole tokens, then `balance_whole` moves
  whole tokens along augmenting paths, which makes it the whole-token optimum (exact when there is
  no entry cost; then the water-filling is its first pass only): 0.06-0.14 ms per decode layer
  and 0.2-0.7 ms per 2048-token layer from 8 x 8 to 256 experts x 32 GPUs
  (`benchmarks/bench_dispatch.py`, one call each, this 2-core CPU).
- `cost_split.cost_aware_split` (its own module): the whole-token split under the physical model's
  step cost max(entry, tile * ceil(t / tile)) per used replica rather than the linear t + entry:
  the better of one-replica LPT and `balanced_split`, improved by local search; within 1% of the
  exact MILP (`cost_split.exact_split_cost`) on small cases, ~1-2 ms per 2048-token layer on the host.

All functions take the replicas as parallel arrays `expert: [replicas]`, `gpu: [replicas]` and the
layer's true load `load: [experts]` (token-to-expert assignments), and return tokens per replica
`[replicas]` (float64; `round_split` turns them into integers that still sum to each expert's load).
"""

from __future__ import annotations

import warnings

import numpy as np


def equal_split(expert: np.ndarray, load: np.ndarray) -> np.ndarray:
    """expert: [replicas]; load: [experts]. Each expert's tokens / its replica count: [replicas]."""
    counts = np.bincount(expert, minlength=load.size)
    return load[expert] / np.maximum(counts[expert], 1)


def share_split(expert: np.ndarray, share: np.ndarray, load: np.ndarray) -> np.ndarray:
    """expert, share: [replicas] (shares sum to 1 per expert); load: [experts]. Returns [replicas]."""
    return share * load[expert]


def random_split(expert: np.ndarray, load: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """expert: [replicas]; load: [experts] whole counts. Every token of expert e picks one of e's
    replicas uniformly at random (one multinomial draw per expert), as vLLM's EPLB maps a logical
    expert to a physical one. Returns whole tokens per replica as float64 [replicas]."""
    counts = np.bincount(expert, minlength=load.size)  # [experts] replicas of each expert
    if ((load > 0) & (counts == 0)).any():
        raise ValueError(f"experts {np.flatnonzero((load > 0) & (counts == 0))[:5].tolist()} have load but no replica")
    order = np.argsort(expert, kind="stable")  # replicas grouped by expert
    grouped = expert[order]
    rank = np.arange(order.size) - np.searchsorted(grouped, grouped)  # [replicas] position within its expert
    width = int(counts.max(initial=1))
    # [experts, width]: 1/c over an expert's c replicas, 0 in the padding (numpy gives the last column
    # the remainder, which is 0 whenever the expert has a replica)
    pvals = np.where(np.arange(width)[None, :] < counts[:, None], 1.0 / np.maximum(counts, 1)[:, None], 0.0)
    draws = rng.multinomial(np.rint(load).astype(np.int64), pvals)  # [experts, width]
    tokens = np.zeros(expert.size, dtype=np.float64)
    tokens[order] = draws[grouped, rank]
    return tokens


def _pour(amount: float, bases: list[float]) -> tuple[float, int]:
    """Water level over `bases` (sorted ascending) that absorbs `amount`; returns (level, used count)."""
    total = 0.0
    level, used = bases[0] + amount, 1
    for k, base in enumerate(bases):
        total += base
        candidate = (amount + total) / (k + 1)
        if k + 1 < len(bases) and candidate > bases[k + 1]:
            continue
        level, used = candidate, k + 1
        break
    return level, used


def water_fill(
    expert: np.ndarray,
    gpu: np.ndarray,
    load: np.ndarray,
    num_gpus: int,
    entry_tokens: float = 0.0,
    gpu_base: np.ndarray | None = None,
    passes: int = 4,
) -> np.ndarray:
    """Token split minimising max GPU work = tokens + entry_tokens per used replica (+ gpu_base).

    expert, gpu: [replicas] (every expert with load > 0 needs at least one replica);
    load: [experts]; gpu_base: [num_gpus] work already on each GPU. Returns tokens [replicas].
    """
    replicas_of: dict[int, list[int]] = {}
    for r, e in enumerate(expert.tolist()):
        replicas_of.setdefault(e, []).append(r)
    gpu_of = gpu.tolist()
    work = [0.0] * num_gpus if gpu_base is None else [float(x) for x in gpu_base]
    tokens = [0.0] * len(gpu_of)
    loads = load.tolist()
    order = sorted((e for e in replicas_of if loads[e] > 0), key=loads.__getitem__, reverse=True)  # stable
    missing = [e for e in range(load.size) if loads[e] > 0 and e not in replicas_of]
    if missing:
        raise ValueError(f"experts {missing[:5]} have load but no warm replica")
    for e in order:  # first every expert whole on its least-busy replica (LPT), then re-pour
        rs = replicas_of[e]
        r = rs[0] if len(rs) == 1 else min(rs, key=lambda r: work[gpu_of[r]])
        tokens[r] = loads[e]
        work[gpu_of[r]] += loads[e] + entry_tokens
    shared = [e for e in order if len(replicas_of[e]) > 1]  # only these can be re-poured
    for _ in range(passes if shared else 0):
        before = (tokens[:], work[:])
        for e in shared:
            rs = replicas_of[e]
            for r in rs:  # lift this expert out, then pour it again over its replicas
                if tokens[r] > 0:
                    work[gpu_of[r]] -= tokens[r] + entry_tokens
                    tokens[r] = 0.0
            entries = sorted((work[gpu_of[r]] + entry_tokens, r) for r in rs)
            level, used = _pour(loads[e], [b for b, _ in entries])
            for base, r in entries[:used]:
                tokens[r] = level - base
                work[gpu_of[r]] = level
        if (tokens, work) == before:  # a fixed point: further passes would repeat it exactly
            break
    return np.asarray(tokens, dtype=np.float64)


def round_split(tokens: np.ndarray, expert: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Integer tokens per replica that sum exactly to each expert's integer load (largest remainder).

    tokens: [replicas] fractional split; expert: [replicas]; load: [experts] integer counts.
    """
    floor = np.floor(tokens + 1e-9).astype(np.int64)
    short = np.rint(load).astype(np.int64) - np.bincount(expert, weights=floor, minlength=load.size).astype(np.int64)
    if not (short > 0).any():
        return floor
    ranked = np.lexsort((floor - tokens, expert))  # by expert, then largest remainder, ties by replica
    grouped = expert[ranked]
    rank = np.arange(ranked.size) - np.searchsorted(grouped, grouped)  # position within its expert
    floor[ranked[rank < short[grouped]]] += 1
    return floor


class _WholeTokenMover:
    """Whole tokens per replica and work per GPU, changed by moving tokens along augmenting paths.

    counts: [replicas] tokens; expert_of, gpu_of: [replicas]; work: [num_gpus] tokens plus the entry
    cost of every used replica.
    """

    def __init__(self, counts: list[int], expert_of: list[int], gpu_of: list[int], num_gpus: int,
                 entry_tokens: float):
        self.counts, self.expert_of, self.gpu_of, self.entry_tokens = counts, expert_of, gpu_of, entry_tokens
        self.replicas_of: dict[int, list[int]] = {}
        self.on_gpu: list[list[int]] = [[] for _ in range(num_gpus)]
        for r, e in enumerate(expert_of):
            self.replicas_of.setdefault(e, []).append(r)
            self.on_gpu[gpu_of[r]].append(r)
        self.work = [0.0] * num_gpus
        for r, c in enumerate(counts):
            if c:
                self.work[gpu_of[r]] += c + entry_tokens

    def can_move(self) -> bool:
        """Whether some expert has two replicas (else no token can change GPU)."""
        return any(len(rs) > 1 for rs in self.replicas_of.values())

    def _scan(self, g: int, best: float, came_from: dict[int, tuple[int, int, int]], reached: list[int]) -> int:
        """Extend the search through the used replicas on GPU g: returns a GPU that ends below `best`
        after taking a token, else -1 (GPUs reached on the way are added to came_from and `reached`)."""
        counts, gpu_of, work, entry_tokens = self.counts, self.gpu_of, self.work, self.entry_tokens
        for r in self.on_gpu[g]:
            if not counts[r]:
                continue
            for r2 in self.replicas_of[self.expert_of[r]]:
                h = gpu_of[r2]
                if h in came_from:
                    continue
                gained = 1 + (entry_tokens if not counts[r2] else 0.0)
                if work[h] + gained < best - 1e-9:  # both ends end below the busiest's load
                    came_from[h] = (r, r2, g)
                    return h
                if counts[r2] or not entry_tokens:
                    came_from[h] = (r, r2, g)
                    reached.append(h)
        return -1

    def path_from(self, source: int) -> list[tuple[int, int]]:
        """Breadth-first: (giving replica, taking replica) steps from a lighter GPU back to `source`;
        empty when the source reaches no GPU that would end below its load."""
        came_from: dict[int, tuple[int, int, int]] = {source: (-1, -1, -1)}  # gpu -> (giver, taker, prev gpu)
        frontier, target, best = [source], -1, self.work[source]
        while frontier and target < 0:
            reached: list[int] = []
            for g in frontier:
                target = self._scan(g, best, came_from, reached)
                if target >= 0:
                    break
            frontier = reached
        path, h = [], target
        while target >= 0 and h != source:
            r, r2, g = came_from[h]
            path.append((r, r2))
            h = g
        return path

    def shift(self, path: list[tuple[int, int]], source: int) -> None:
        """Move as many whole tokens along `path` (from `path_from(source)`) as evens its two ends."""
        counts, gpu_of, work, entry_tokens = self.counts, self.gpu_of, self.work, self.entry_tokens
        target = gpu_of[path[0][1]]
        extra = entry_tokens if not counts[path[0][1]] else 0.0
        room = int((work[source] - work[target] - extra) // 2)
        amount = max(1, min([room] + [counts[r] for r, _ in path]))
        for r, r2 in path:
            for rr, sign in ((r, -1), (r2, 1)):
                before = counts[rr]
                counts[rr] += sign * amount
                work[gpu_of[rr]] += sign * amount + entry_tokens * ((counts[rr] > 0) - (before > 0))


def balance_whole(
    tokens: np.ndarray,
    expert: np.ndarray,
    gpu: np.ndarray,
    num_gpus: int,
    entry_tokens: float = 0.0,
    max_moves: int = 10_000,
) -> np.ndarray:
    """Move whole tokens along augmenting paths until the busiest GPU cannot shed any more.

    tokens: [replicas] integer split (e.g. `round_split` of `water_fill`); expert, gpu: [replicas].
    Returns the new integer split [replicas], same sum per expert.

    Why: tokens are indivisible, and with few of them (a decode step of top-8 routing is 8
    assignments) rounding a fractional split can put two of one token's experts on one GPU while
    another GPU idles. A path busiest GPU -(expert a)-> GPU x -(expert b)-> ... -> lighter GPU moves
    a token of a to its replica on x, one of b out of x, and so on: only the two ends change load.
    With entry_tokens = 0 the result is the integer optimum: when the busiest GPU reaches no GPU at
    least 2 lighter, the GPUs it reaches hold only experts whose replicas are all among them, and
    are already as even as whole tokens allow. With an entry cost, paths only pass through replicas
    already in use, so no GPU but the last gains a weight read.
    """
    out = np.rint(tokens).astype(np.int64)
    mover = _WholeTokenMover(out.tolist(), expert.tolist(), gpu.tolist(), num_gpus, entry_tokens)
    if not mover.can_move():
        return out
    for _ in range(max_moves):
        source = max(range(num_gpus), key=mover.work.__getitem__)
        path = mover.path_from(source)
        if not path:
            break
        mover.shift(path, source)
    return np.asarray(mover.counts, dtype=np.int64)


def balanced_split(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int,
                   entry_tokens: float = 0.0) -> np.ndarray:
    """moeless's dispatch: water-fill, round to whole tokens, then shed the busiest GPU's excess
    along augmenting paths. expert, gpu: [replicas]; load: [experts] integer counts.
    Returns whole tokens per replica as float64 [replicas] (the water-filled fractional split when
    the loads are not whole, e.g. a forecast)."""
    whole_load = np.array_equal(load, np.rint(load))
    # Without an entry cost the augmenting paths reach the optimum from any start, so water-filling's
    # re-pour passes are skipped: decode steps get 1.5-2x faster, 2048-token batches up to 1.6x slower
    # (more augmenting paths); decode steps are most layer calls. With an entry cost the passes still
    # pick which replicas to use.
    passes = 0 if whole_load and entry_tokens == 0 else 4
    fractional = water_fill(expert, gpu, load, num_gpus, entry_tokens, passes=passes)
    if not whole_load:
        return fractional
    whole = round_split(fractional, expert, load)
    return balance_whole(whole, expert, gpu, num_gpus, entry_tokens).astype(np.float64)


def gpu_work(gpu: np.ndarray, tokens: np.ndarray, num_gpus: int, entry_tokens: float = 0.0) -> np.ndarray:
    """gpu, tokens: [replicas]. Work per GPU (tokens + entry cost of used replicas): [num_gpus]."""
    used = (tokens > 0).astype(np.float64)
    return np.bincount(gpu, weights=tokens + entry_tokens * used, minlength=num_gpus)


def lp_min_peak(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int) -> float:
    """The exact optimum water-filling approximates: the smallest possible busiest-GPU load.

    A reference for tests and benchmarks (solved with CBC; far too slow for the online path).
    expert: [replicas] logical expert of each warm replica; gpu: [replicas] its GPU;
    load: [experts] tokens routed to each expert; every expert needs at least one replica.
    """
    import pulp

    from moeless_cli.planning.solvers.milp import lp_variable

    prob = pulp.LpProblem("dispatch", pulp.LpMinimize)
    peak = lp_variable(prob, "peak")
    tokens = [lp_variable(prob, f"x{r}", lowBound=0) for r in range(expert.size)]  # tokens per replica
    prob += peak
    for e in range(load.size):
        prob += pulp.lpSum(tokens[r] for r in np.flatnonzero(expert == e)) == load[e]
    for g in range(num_gpus):
        prob += pulp.lpSum(tokens[r] for r in np.flatnonzero(gpu == g)) <= peak
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PULP_CBC_CMD is the bundled CBC in PuLP 3
        prob.solve(pulp.PULP_CBC_CMD(msg=0))
    return float(peak.value())
