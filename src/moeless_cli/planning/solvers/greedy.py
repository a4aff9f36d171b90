"""Fast unequal-share heuristics: water-filling and heaviest-first packing with splits.

Both return one layer's replicas as (expert, gpu, tokens) triples; shares are tokens / load.
They are the warm start and the fallback of the ILP, so `ilp` is never worse than them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from moeless_cli.planning.plan import LayerPlan

Pieces = list[tuple[int, int, float]]  # (expert, gpu, tokens)


def pieces_to_layer(pieces: Pieces, load: np.ndarray) -> LayerPlan:
    """Merge pieces of the same (expert, gpu) and turn tokens into shares. load: [experts]."""
    merged: dict[tuple[int, int], float] = {}
    for e, g, tokens in pieces:
        merged[(e, g)] = merged.get((e, g), 0.0) + tokens
    keys = sorted(merged)
    expert = np.array([e for e, _ in keys], dtype=np.int64)
    gpu = np.array([g for _, g in keys], dtype=np.int64)
    tokens = np.array([merged[k] for k in keys])
    per_expert = np.bincount(expert, weights=tokens, minlength=load.size)  # [experts]
    counts = np.bincount(expert, minlength=load.size)
    share = np.where(per_expert[expert] > 0, tokens / np.maximum(per_expert[expert], 1e-300), 1.0 / counts[expert])
    return LayerPlan(expert, gpu, share)


def _water_fill(load: np.ndarray, num_gpus: int, slots: int, quota: Callable[[int, int], int]) -> Pieces | None:
    """Fill GPUs one after another to total/G, splitting at most one expert per GPU boundary.

    Each GPU first takes a carried-over part of the previous split expert, then up to
    quota(items_left, gpus_left) whole light experts, then heavy experts, splitting the last one.
    load: [experts]. Returns None when some GPU would need more than `slots` pieces.
    """
    target = float(load.sum()) / num_gpus
    order = [int(e) for e in np.argsort(-load, kind="stable")]  # heaviest first
    left = {e: float(load[e]) for e in order}
    hi, lo = 0, len(order) - 1  # next heavy, next light (indices into order)
    pieces: Pieces = []
    eps = 1e-12 * max(target, 1.0)
    for g in range(num_gpus):
        last = g == num_gpus - 1
        cap, used = (float("inf") if last else target), 0
        carried = hi <= lo and left[order[hi]] < load[order[hi]]  # previous GPU split this expert
        lights = quota(lo - hi + 1, num_gpus - g)
        # Keep a slot for the heavy split, unless a carried part will fill the rest by itself.
        while lights > 0 and hi < lo and left[order[lo]] <= cap and (
            used < slots - 1 - carried or (carried and used < slots - 1 and left[order[hi]] >= cap - left[order[lo]])
        ):
            e = order[lo]
            pieces.append((e, g, left[e]))
            cap, used, lights, lo = cap - left[e], used + 1, lights - 1, lo - 1
        while hi <= lo and cap > eps and (used < slots or last):
            e = order[hi]
            take = min(left[e], cap)
            pieces.append((e, g, take))
            cap, used, left[e] = cap - take, used + 1, left[e] - take
            if left[e] <= eps:
                hi += 1
        if used > slots:
            return None
    if hi <= lo:
        return None
    return pieces


def _pick_near(pool: list[int], load: np.ndarray, count: int, target: float) -> list[int]:
    """Up to `count` experts from `pool` (heaviest first) whose sum comes close to `target` from
    below, each pick leaving room for the lightest experts still to be picked."""
    chosen: list[int] = []
    total = 0.0
    for j in range(count):
        rest = sorted(load[e] for e in pool if e not in chosen)[: count - j - 1]
        room = target - total - float(sum(rest))
        pick = next((e for e in pool if e not in chosen and load[e] <= room), None)
        if pick is None:
            pick = next((e for e in reversed(pool) if e not in chosen), None)
            if pick is None or total + load[pick] > target:
                break
        chosen.append(pick)
        total += float(load[pick])
    return chosen


def _bridge_fill(load: np.ndarray, num_gpus: int, slots: int) -> Pieces | None:
    """For tight slots (about E + G - 1 of them): the G - 1 heaviest experts become bridges, each
    split between neighbouring GPUs of a chain. GPU by GPU, whole experts are picked to fill what
    the carried bridge part and the expected next bridge part leave, and the bridge whose split
    covers the rest exactly is chosen. load: [experts]. Returns None when caps are exceeded."""
    G = num_gpus
    if G < 2 or slots < 2 or load.size < G:
        return None
    target = float(load.sum()) / G
    order = [int(e) for e in np.argsort(-load, kind="stable")]
    bridges, pool = order[: G - 1], order[G - 1 :]
    pieces: Pieces = []
    carry_expert, carry = -1, 0.0
    for pos in range(G):
        cap = slots - (carry_expert >= 0)
        if carry_expert >= 0:
            pieces.append((carry_expert, pos, carry))
        if pos == G - 1:
            if len(pool) > cap:
                return None
            pieces.extend((e, pos, float(load[e])) for e in pool)
            break
        cap -= 1  # one slot for this GPU's bridge
        bridge_per_gpu = (carry + sum(float(load[b]) for b in bridges)) / (G - pos)
        part = max(bridge_per_gpu - carry, 0.0)
        # leave enough whole experts for the GPUs after this one
        must = max(0, len(pool) - ((slots - 2) * (G - pos - 2) + slots - 1))
        chosen = _pick_near(pool, load, min(cap, len(pool)), target - carry - part)
        if len(chosen) < must:
            chosen += [e for e in reversed(pool) if e not in chosen][: must - len(chosen)]
        if len(chosen) > cap:
            return None
        for e in chosen:
            pool.remove(e)
            pieces.append((e, pos, float(load[e])))
        need = target - carry - float(sum(load[e] for e in chosen))
        covering = [b for b in bridges if load[b] >= need]
        b = min(covering, key=lambda k: load[k]) if covering else max(bridges, key=lambda k: load[k])
        bridges.remove(b)
        take = float(np.clip(need, 0.0, load[b]))
        pieces.append((b, pos, take))
        carry_expert, carry = b, float(load[b]) - take
    return pieces


def _dedicate_hot(load: np.ndarray, num_gpus: int, companions: int) -> tuple[Pieces, np.ndarray, int]:
    """Give each expert heavier than T = total/G GPUs of its own until its remainder is at most T.

    Each such GPU also takes up to `companions` of the lightest other experts whole (so a tight
    slot budget is not wasted) and the hot expert fills it to exactly T. load: [experts].
    Returns (pieces on GPUs 0..D-1, residual load [experts] with NaN for experts fully placed, D).
    The residual total is exactly T per remaining GPU."""
    target = float(load.sum()) / num_gpus
    pieces: Pieces = []
    residual = load.astype(np.float64).copy()
    if target <= 0:
        return pieces, residual, 0
    lights = [e for e in np.argsort(load, kind="stable").tolist() if load[e] < target]
    for e in np.argsort(-load, kind="stable").tolist():
        while residual[e] > target * (1 + 1e-12):
            gpu = len({g for _, g, _ in pieces})
            room = target
            for _ in range(companions):
                if not lights or load[lights[0]] > room / 2:
                    break
                light = lights.pop(0)
                pieces.append((light, gpu, float(load[light])))
                residual[light] = np.nan
                room -= float(load[light])
            pieces.append((e, gpu, room))
            residual[e] -= room
    return pieces, residual, len({g for _, g, _ in pieces})


def water_fill_candidates(load: np.ndarray, num_gpus: int, slots: int) -> list[Pieces]:
    """Water-filling under a few orderings; each candidate uses <= E + G - 1 replicas.

    Also tried: experts heavier than a GPU's fair share first get GPUs of their own (alone, or
    with light companions in the other slots) and the rest is filled on the remaining GPUs."""
    quotas = (
        lambda items, gpus: slots,
        lambda items, gpus: -(-items // gpus) - 1,
        lambda items, gpus: items // gpus - 1,
        lambda items, gpus: 0,
    )

    def fills(part: np.ndarray, gpus: int) -> list[Pieces | None]:
        return [_bridge_fill(part, gpus, slots)] + [_water_fill(part, gpus, slots, q) for q in quotas]

    out = fills(load, num_gpus)
    for companions in (0, slots - 1):
        hot, residual, dedicated = _dedicate_hot(load, num_gpus, companions)
        if not dedicated or dedicated >= num_gpus:
            continue
        active = np.flatnonzero(~np.isnan(residual))  # experts still to place
        for fill in fills(residual[active], num_gpus - dedicated):
            if fill is not None:
                out.append(hot + [(int(active[e]), g + dedicated, t) for e, g, t in fill])
    return [pieces for pieces in out if pieces is not None]


def pack_and_split(load: np.ndarray, num_gpus: int, slots: int, max_replicas: int) -> Pieces:
    """Heaviest-first packing of whole experts, then split the busiest GPU's work while replicas last.

    load: [experts]; needs E <= G * slots. Always feasible.
    """
    num_experts = load.size
    gpu_load = np.zeros(num_gpus)
    used = np.zeros(num_gpus, dtype=np.int64)
    tokens: dict[tuple[int, int], float] = {}
    for e in np.argsort(-load, kind="stable").tolist():
        free = np.flatnonzero(used < slots)
        g = int(free[np.argmin(gpu_load[free])])
        tokens[(e, g)] = float(load[e])
        gpu_load[g] += load[e]
        used[g] += 1
    replicas = num_experts
    for _ in range(4 * (num_gpus * slots)):
        hot = int(np.argmax(gpu_load))
        on_hot = [(t, e) for (e, g), t in tokens.items() if g == hot and t > 0]
        if not on_hot:
            break
        # Move work to the least-loaded GPU that already holds one of these experts (no new
        # replica) or, while replicas and slots last, to the least-loaded GPU with a free slot.
        options = [(gpu_load[g2], e, g2, t) for t, e in on_hot for (e2, g2) in tokens if e2 == e and g2 != hot]
        free = np.flatnonzero((used < slots) & (np.arange(num_gpus) != hot))
        if replicas < max_replicas and free.size:
            cold = int(free[np.argmin(gpu_load[free])])
            t, e = max(on_hot)
            options.append((gpu_load[cold], e, cold, t))
        if not options:
            break
        _, e, dst, t = min(options)
        best = (e, dst, t)
        e, dst, t = best
        delta = min(t, (gpu_load[hot] - gpu_load[dst]) / 2)
        if delta <= 1e-9 * max(gpu_load[hot], 1.0):
            break
        if (e, dst) not in tokens:
            tokens[(e, dst)] = 0.0
            used[dst] += 1
            replicas += 1
        tokens[(e, hot)] -= delta
        tokens[(e, dst)] += delta
        gpu_load[hot] -= delta
        gpu_load[dst] += delta
    return [(e, g, t) for (e, g), t in tokens.items() if t > 0 or load[e] == 0]
