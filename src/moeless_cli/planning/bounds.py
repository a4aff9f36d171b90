"""Lower bounds: on the busiest GPU's load (optimality gaps of the planners), and the lossless floor of
one MoE layer's time (the bench's `bound` system).

The lossless floor. One layer, whole loads t_e >= 0 (token-to-expert assignments, T = sum t_e) on G
GPUs. A lossless solution places replicas (expert, GPU), at most S on a GPU and R in all, and gives
replica r whole tokens x_r >= 0 with sum_{r of e} x_r = t_e. A replica serving x tokens costs f(x)
seconds of its GPU, f(0) = 0; a GPU runs its replicas one after another, so the layer's expert time
is M = max_g sum_{r on g} f(x_r). Assumptions on f (checked by `ReplicaCost.tabulate`):
  (F1) f is nondecreasing;  (F2) f is subadditive: f(a + b) <= f(a) + f(b).
The time models satisfy both: compute f = c x; roofline f = w + c x for x > 0 (w + c(a + b) <= 2w +
c(a + b)); physical f = max(w, c q ceil(x / q)) for x > 0 (ceil(a/q) + ceil(b/q) >= ceil((a+b)/q)
and max(w, u) + max(w, v) >= max(w, u + v)).

Let y_eg = tokens of e on GPU g. Three facts:
  (P1) e's replicas on g cost >= f(y_eg)          (F2, summed over them);
  (P2) GPU g costs >= f(sum_e y_eg)                (F2 over all its replicas);
  (P3) a GPU with n used replicas costs >= n f(1)   (F1: each serves >= 1 token).
Take any L >= M and cap(L) = max{y : f(y) <= L}. Then
  (a) y_eg <= cap(L) by P1 (F1), so e is on m_e >= k_e = ceil(t_e / cap(L)) GPUs, and m_e <= G;
  (b) sum_e m_e <= used replicas <= R, and <= G min(S, floor(L / f(1))) by P3;
  (c) call a GPU single if it serves tokens of one expert, mixed if of two or more. A single GPU
      serves <= cap(L) of its expert's tokens (a). A mixed GPU serves d >= 2 experts: d <= dmax(L) =
      min(S, floor(L / f(1))) (P3); each expert's part there is <= capm(L) = cap(L - f(1)) (P1: the
      others cost >= f(1)); and its tokens Y <= cap2(L), as L >= 2 alpha + beta Y for each minorant
      below with alpha >= 0 (P1), and f(Y) <= L (P2). With s_e single GPUs serving e, n = sum_e s_e:
        tokens: T <= sum_e min(t_e, s_e cap(L)) + (G - n) cap2(L);
        pieces: e's tokens left to mixed GPUs, r_e >= (t_e - s_e cap(L))^+, need p_e(s_e) =
                ceil(r_e / capm(L)) mixed GPUs, and sum_e p_e(s_e) <= (G - n) dmax(L).
      For each n in 0..G the singles take at most the n largest chunks of cap(L) cut from the experts
      (each expert's chunks only shrink, so the greedy choice is the best one), and remove at most the
      n largest chunks of q = ceil(cap(L) / capm(L)) cut from the p_e(0) (one single removes at most q
      pieces: ceil(a/c) - ceil((a - b)/c) <= ceil(b/c)). Some n must allow both. This implies
      T <= G cap(L) (P2), and it is what makes whole experts count: 8 experts on 8 GPUs whose weight
      reads leave no room for a second replica cannot beat the largest one alone;
  (d) G L >= sum_g cost_g >= sum_e sum_g f(y_eg) >= sum_e W_e(k_e), where W_e(k) >= f(t_e) by F2,
      and for every affine minorant f(y) >= alpha + beta y on 1 <= y <= T:
      sum_g f(y_eg) >= m_e alpha + beta t_e >= (k_e alpha if alpha >= 0 else G alpha) + beta t_e.
Each condition only gets easier as L grows (cap, capm, cap2 and dmax are nondecreasing in L), so the
least L meeting all of them, L*, is <= M for every lossless solution: a lower bound on its expert
time. Between consecutive breakpoints v_j < v_{j+1} (the values f(y), f(y) + f(1) and k f(1)),
cap, capm and floor(L / f(1)) are constant, so the least L in [v_j, v_{j+1}) is
max(v_j, sum_e W_e / G, f(1) ceil(sum_e k_e / G)) when (a)-(c) hold (cap2 taken at v_{j+1}, its
largest value there: weaker, still valid) and it stays below v_{j+1}. `busiest_gpu_floor` finds the
first such interval by bisection (O((E + G) log T) per layer). It contains the classic floors:
sum_e f(t_e) / G (one replica per expert minimises total work, F2), f(ceil(T / G)) (tokens are
whole), and each hot expert's split over at most min(G, R - E' + 1) GPUs. Rounding only ever makes
a condition easier (caps are read with a hair of slack), so float error cannot lift L* above M.

The exchange: GPU g's all-to-all takes at least a_g n_g, n_g its token-assignments and a_g the
per-token time of its slowest receiving link class. For any split of T over the GPUs,
max_g a_g n_g >= T / sum_g (1 / a_g) (n_g <= z / a_g for z the max, summed). When every GPU has the
same links (a_g = a), that is a T / G, the time of the balanced split, so balanced is the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def max_load_lower_bound(load: np.ndarray, num_gpus: int, max_replicas: int) -> float:
    """load: [experts] tokens of one layer. No plan with at most `max_replicas` replicas beats this.

    - total / G: someone carries at least the mean;
    - the heaviest expert can spread over at most min(G, 1 + max_replicas - E) GPUs
      (every other expert keeps one replica), so one of them carries its part.
    """
    num_experts = load.size
    total = float(load.sum())
    spread = max(1, min(num_gpus, 1 + max_replicas - num_experts))
    return max(total / num_gpus, float(load.max(initial=0.0)) / spread)


def is_optimal(max_load: float, bound: float, tolerance: float) -> bool:
    """True when max_load is within `tolerance` (relative) of the bound."""
    return max_load <= bound * (1.0 + tolerance) + 1e-12



@dataclass(frozen=True)
class ReplicaCost:
    """A replica's seconds by the whole tokens it serves (f above), tabulated, with what the floor needs."""

    seconds: np.ndarray  # [max_tokens + 1] f(x) for x = 0..max_tokens
    levels: np.ndarray  # [J] breakpoints v_j ascending: the values f(y), f(y) + f(1) and k f(1)
    level_cap: np.ndarray  # [J] cap(v_j): the most tokens y with f(y) <= v_j
    piece_cap: np.ndarray  # [J] capm(v_j) = cap(v_j - f(1)): an expert's part on a GPU it shares (0: none)
    replicas_within: np.ndarray  # [J] floor(v_j / f(1)): used replicas one GPU can run within v_j
    intercepts: np.ndarray  # [m] alpha of affine minorants f(y) >= alpha + beta y on 1..max_tokens
    slopes: np.ndarray  # [m] beta of the same

    @property
    def max_tokens(self) -> int:
        return self.seconds.size - 1

    @classmethod
    def tabulate(cls, seconds: np.ndarray) -> ReplicaCost:
        """seconds: [max_tokens + 1] f(0..max_tokens). Raises ValueError unless f(0) = 0 < f(1) and F1, F2 hold."""
        f = np.asarray(seconds, dtype=np.float64)
        if f.size < 2 or f[0] != 0.0 or f[1] <= 0.0:
            raise ValueError("replica cost must have f(0) = 0 < f(1)")
        if (np.diff(f) < 0).any():
            raise ValueError("replica cost must not decrease with tokens")
        _check_subadditive(f)
        one = f[1]
        most = min(int(f[-1] / one) + 2, 1 << 16)
        levels = np.unique(np.concatenate([f[1:], f[1:] + one, one * np.arange(2, most + 1)]))
        y = np.arange(1, f.size, dtype=np.float64)
        steepest = float((f[1:] / y).min())  # the largest slope with a nonnegative intercept
        secant = float((f[-1] - f[1]) / (f.size - 2)) if f.size > 2 else steepest
        slopes = np.unique([0.0, steepest, secant, steepest / 2, secant / 2])
        intercepts = np.array([float((f[1:] - beta * y).min()) for beta in slopes])
        return cls(f, levels, _cap(f, levels), _cap(f, levels - one),
                   np.floor(levels / one * (1 + 1e-12)).astype(np.int64), intercepts, slopes)


def _cap(f: np.ndarray, level: np.ndarray) -> np.ndarray:
    """f: [n + 1] nondecreasing; level: [J]. The most tokens y <= n with f(y) <= level, read with a hair of
    slack (a larger cap only weakens a condition): [J] (0 below f(1))."""
    slack = level + 1e-12 * np.abs(level) + 1e-300
    return np.maximum(np.searchsorted(f, slack, side="right") - 1, 0).astype(np.int64)


def _check_subadditive(f: np.ndarray) -> None:
    """f(a + b) <= f(a) + f(b) for a in 1..64 and every power of two, all b (a sample: the full check is O(n^2))."""
    n = f.size - 1
    firsts = sorted(set(range(1, min(64, n) + 1)) | {1 << i for i in range(n.bit_length()) if (1 << i) <= n})
    tolerance = 1e-12 * f[-1]
    for a in firsts:
        b = np.arange(1, n - a + 1)
        if (f[a + b] > f[a] + f[b] + tolerance).any():
            raise ValueError(f"replica cost is not subadditive (f({a} + b) > f({a}) + f(b) for some b)")


def busiest_gpu_floor(load: np.ndarray, cost: ReplicaCost, num_gpus: int, slots: int, max_replicas: int) -> np.ndarray:
    """load: [batches, experts] whole loads of one layer each. The least busiest-GPU expert time any
    lossless placement (<= slots per GPU, <= max_replicas in all) and whole-token split can reach, as a
    lower bound L* (module docstring): [batches] seconds, 0 for a batch without tokens."""
    t = np.rint(np.atleast_2d(load)).astype(np.int64)  # [batches, experts]
    total = t.sum(axis=1)
    if total.max(initial=0) > cost.max_tokens:
        raise ValueError(f"replica cost tabulated to {cost.max_tokens} tokens, a batch has {total.max()}")
    if ((t > 0).sum(axis=1) > min(max_replicas, num_gpus * slots)).any():
        raise ValueError("more experts have tokens than the memory holds replicas")
    lo, hi = np.zeros(t.shape[0], dtype=np.int64), np.full(t.shape[0], cost.levels.size - 1)
    while (lo < hi).any():  # invariant: the least L lies in an interval in lo..hi (the last one always admits one)
        mid = (lo + hi) // 2
        ok, _ = _interval_floor(t, total, mid, cost, num_gpus, slots, max_replicas)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
    _, floor = _interval_floor(t, total, hi, cost, num_gpus, slots, max_replicas)
    return np.where(total > 0, floor, 0.0)


def _interval_floor(t: np.ndarray, total: np.ndarray, j: np.ndarray, cost: ReplicaCost, num_gpus: int, slots: int,
                    max_replicas: int) -> tuple[np.ndarray, np.ndarray]:
    """t: [batches, experts]; total: [batches]; j: [batches] intervals [v_j, v_{j+1}).
    Returns (whether some L in the interval meets (a)-(d), the least such L): [batches] each."""
    G = num_gpus
    upper = np.append(cost.levels[1:], np.inf)[j]
    cap = cost.level_cap[j]  # [batches], >= 1: every breakpoint is >= f(1)
    k = -(-t // cap[:, None])  # [batches, experts] GPUs each expert needs at least (0 for idle ones)
    spread = k.sum(axis=1)
    fits = (k.max(axis=1) <= G) & (spread <= min(max_replicas, G * slots))
    fits &= _mixed_gpus_fit(t, total, cap, cost.piece_cap[j], _shared_cap(cost, cap, upper),
                            np.minimum(cost.replicas_within[j], slots), G)
    work = cost.seconds[t]  # f(t_e): [batches, experts]
    for alpha, beta in zip(cost.intercepts.tolist(), cost.slopes.tolist()):
        entries = k * alpha if alpha >= 0 else np.full_like(k, G) * alpha
        work = np.maximum(work, entries + beta * t)
    work = np.where(t > 0, work, 0.0)
    floor = np.maximum.reduce([cost.levels[j], work.sum(axis=1) / G, cost.seconds[1] * -(-spread // G)])
    return fits & (floor < upper), floor


def _shared_cap(cost: ReplicaCost, cap: np.ndarray, level: np.ndarray) -> np.ndarray:
    """cap, level: [batches]. cap2: the most tokens a mixed GPU can take within `level` (2 alpha + beta Y
    <= level for each minorant with alpha >= 0, and Y <= cap): [batches], rounded up by a hair."""
    shared = cap.astype(np.float64)
    for alpha, beta in zip(cost.intercepts.tolist(), cost.slopes.tolist()):
        if alpha < 0:
            continue
        room = level - 2 * alpha
        if beta > 0:
            most = np.floor(np.where(np.isinf(level), np.inf, room / beta) * (1 + 1e-9) + 1e-9)
        else:
            most = np.where(room >= -1e-12 * np.abs(level), np.inf, -1.0)
        shared = np.minimum(shared, np.maximum(most, 0.0))
    return shared


def _mixed_gpus_fit(t: np.ndarray, total: np.ndarray, cap: np.ndarray, piece_cap: np.ndarray, shared: np.ndarray,
                    most_replicas: np.ndarray, num_gpus: int) -> np.ndarray:
    """Condition (c). t: [batches, experts]; total, cap, piece_cap (capm), shared (cap2), most_replicas
    (dmax): [batches]. Whether some count n of single GPUs leaves room for every token and every piece."""
    G = num_gpus
    n = np.arange(G + 1)[None, :]  # single GPUs
    mixed = piece_cap > 0  # else no GPU can serve two experts within the level: every GPU is single
    shared = np.where(mixed, shared, 0.0)
    taken = np.pad(np.cumsum(_top_chunks(t, cap, G), axis=1), ((0, 0), (1, 0)))  # [batches, G + 1]
    tokens_fit = taken + (G - n) * shared[:, None] >= total[:, None]
    part = np.where(mixed, piece_cap, 1)
    pieces = -(-t // part[:, None])  # p_e(0): [batches, experts]
    removed = np.pad(np.cumsum(_top_chunks(pieces, -(-cap // part), G), axis=1), ((0, 0), (1, 0)))
    pieces_fit = removed >= pieces.sum(axis=1)[:, None] - (G - n) * most_replicas[:, None]
    return (tokens_fit & (pieces_fit | ~mixed[:, None])).any(axis=1)


def _top_chunks(amount: np.ndarray, size: np.ndarray, width: int) -> np.ndarray:
    """amount: [batches, experts] >= 0; size: [batches] >= 1. Each expert's amount cut into chunks of size
    (the last one shorter), the `width` largest per batch, largest first, zeros past the end: [batches, width]."""
    full = amount // size[:, None]
    whole = full.sum(axis=1)[:, None]  # chunks of exactly `size`
    rest = -np.sort(-(amount - full * size[:, None]), axis=1)[:, :width]
    rest = np.pad(rest, ((0, 0), (0, width - rest.shape[1])))
    i = np.arange(width)[None, :]
    after = np.take_along_axis(rest, np.clip(i - whole, 0, width - 1), axis=1)
    return np.where(i < whole, size[:, None], after)


def exchange_floor_per_token(receive_s: np.ndarray) -> float:
    """receive_s: [G] seconds GPU g's all-to-all takes per token-assignment it serves, by its slowest
    receiving link class (a_g above). The least possible max_g a_g n_g per token of sum_g n_g: 1 / sum 1/a_g
    (0 when some GPU receives for free, e.g. a single GPU)."""
    a = np.asarray(receive_s, dtype=np.float64)
    if a.size == 0 or (a <= 0).any():
        return 0.0
    return float(1.0 / (1.0 / a).sum())
