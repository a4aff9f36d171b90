"""Slot maps for engines that split an expert's tokens evenly over its replicas (vLLM, SGLang).

Such an engine holds P physical slots per MoE layer, P / G on each GPU (slot p on GPU p // (P / G)),
and sends every replica of expert e the same 1 / c_e of e's tokens, c_e being e's replica count. A
plan for it is one row per layer, `phy2log: [P]` (the logical expert in each slot, every expert at
least once), and a GPU's load is the sum over its slots of load[e] / c_e.

moeless's plan for that world starts from DeepSeek EPLB's own map (the engines' default) and from
the replica counts of moeless's best greedy plan (`solvers.ilp.greedy_candidates`, filled up to P
slots and packed heaviest first), and improves each start, until neither step helps:
- swap two replicas between the busiest GPU and another (`solvers.local_search.swap_improve`);
- hand one slot from an expert to another (replica counts change), the move that most lowers the
  busiest GPU.
Both accept only a lower peak, so the result is never less balanced than the default. With the map
now loaded, that map improved the same way is a second start; the GPUs of the result are then
relabelled (`locality.align_gpus`) and each GPU's slots ordered so that experts keep their slots.
With expert groups packed onto nodes (the default's hierarchical mode), each node is improved on
its own, so groups stay on the node the default chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.planning.locality import align_gpus
from moeless_cli.planning.plan import LayerPlan, PlanningProblem
from moeless_cli.planning.solvers.eplb import balanced_packing, rebalance_experts
from moeless_cli.planning.solvers.ilp import greedy_candidates
from moeless_cli.planning.solvers.local_search import swap_improve
from moeless_cli.planning.topology import build_topology, move_price, pair_seconds_per_gb


@dataclass
class SlotMapOptions:
    """How hard to search and what to trade for fewer weight moves."""

    rounds: int = 8  # alternations of swaps and slot hand-overs per start
    max_handovers: int = 200  # slot hand-overs per round at most
    keep_groups_on_nodes: bool = True  # hierarchical mode: improve each node alone (groups stay put)
    move_slack: float = 0.0  # with an old map: accept a peak this much (relative) above the best
    #                          start if it moves fewer weights (never above the default's peak)


@dataclass
class SlotMapResult:
    phy2log: np.ndarray  # [layers, P] int64, logical expert in each slot
    default_peak: np.ndarray  # [layers] busiest GPU's tokens under DeepSeek EPLB's map
    peak: np.ndarray  # [layers] busiest GPU's tokens under phy2log
    moved: np.ndarray  # [layers] replicas placed on a GPU that did not hold them (0 without old map)


def slot_gpu_loads(row: np.ndarray, load: np.ndarray, num_gpus: int) -> np.ndarray:
    """row: [P] logical expert per slot; load: [experts]. Returns [G] tokens per GPU, each expert's
    tokens spread evenly over its slots (the engines' own dispatch)."""
    counts = np.bincount(row, minlength=load.size)
    per_slot = load[row] / counts[row]
    return np.bincount(np.arange(row.size) // (row.size // num_gpus), weights=per_slot, minlength=num_gpus)


def balancedness(phy2log: np.ndarray, load: np.ndarray, num_gpus: int) -> float:
    """vLLM's logged balancedness: sum over layers of mean GPU tokens / sum of max GPU tokens.

    phy2log: [layers, P]; load: [layers, experts]."""
    loads = np.stack([slot_gpu_loads(row, w, num_gpus) for row, w in zip(phy2log, load)])  # [layers, G]
    peak = float(loads.max(axis=1).sum())
    return float(loads.mean(axis=1).sum()) / peak if peak > 0 else 1.0


def _row_loads(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int) -> np.ndarray:
    """expert, gpu: [replicas]. Returns [G] tokens per GPU under an even split."""
    counts = np.bincount(expert, minlength=load.size)
    return np.bincount(gpu, weights=load[expert] / counts[expert], minlength=num_gpus)


def _best_handover(expert: np.ndarray, gpu: np.ndarray, load: np.ndarray, num_gpus: int) -> tuple[int, int, float]:
    """The single slot hand-over (replica r becomes expert b) that most lowers the busiest GPU.

    Candidates: a replica on the busiest GPU becomes any expert of the row, or any replica becomes
    an expert the busiest GPU holds; the donor keeps at least one replica. expert, gpu: [replicas].
    Returns (r, b, new peak); r = -1 when nothing lowers the peak.
    """
    counts = np.bincount(expert, minlength=load.size)  # [experts]
    present = np.flatnonzero(counts)
    held = np.zeros((load.size, num_gpus))
    np.add.at(held, (expert, gpu), 1.0)  # [experts, G] replicas of e on g
    gpu_load = held.T @ np.where(counts > 0, load / np.maximum(counts, 1), 0.0)  # [G]
    hot = int(np.argmax(gpu_load))
    on_hot = np.flatnonzero(gpu == hot)
    donors = np.flatnonzero(counts[expert] >= 2)
    r = np.concatenate([np.repeat(np.intersect1d(on_hot, donors), present.size), np.repeat(donors, on_hot.size)])
    b = np.concatenate([np.tile(present, np.intersect1d(on_hot, donors).size), np.tile(expert[on_hot], donors.size)])
    keep = expert[r] != b
    r, b = r[keep], b[keep]
    if r.size == 0:
        return -1, -1, float(gpu_load[hot])
    a = expert[r]
    gain_a = load[a] / (counts[a] - 1) - load[a] / counts[a]  # each remaining replica of a gets heavier
    gain_b = load[b] / (counts[b] + 1) - load[b] / counts[b]  # each replica of b gets lighter
    new = gpu_load[None, :] + held[a] * gain_a[:, None] + held[b] * gain_b[:, None]  # [moves, G]
    new[np.arange(r.size), gpu[r]] += load[b] / (counts[b] + 1) - load[a] / (counts[a] - 1)
    peaks = new.max(axis=1)
    k = int(np.argmin(peaks))
    if peaks[k] >= gpu_load[hot] * (1 - 1e-12):
        return -1, -1, float(gpu_load[hot])
    return int(r[k]), int(b[k]), float(peaks[k])


def improve_row(row: np.ndarray, load: np.ndarray, num_gpus: int, options: SlotMapOptions) -> np.ndarray:
    """row: [P] slots of `num_gpus` GPUs (P / G each), logical ids; load: [experts]. Returns a row
    with the same experts present whose busiest GPU is no busier (swaps and slot hand-overs)."""
    slots = row.size // num_gpus
    expert, gpu = row.astype(np.int64).copy(), np.arange(row.size, dtype=np.int64) // slots
    peak = float(_row_loads(expert, gpu, load, num_gpus).max())
    for _ in range(options.rounds):
        counts = np.bincount(expert, minlength=load.size)
        layer = swap_improve(LayerPlan(expert, gpu, 1.0 / counts[expert]), load, num_gpus, slots)
        expert, gpu = layer.expert.copy(), layer.gpu.copy()
        for _ in range(options.max_handovers):
            r, b, _ = _best_handover(expert, gpu, load, num_gpus)
            if r < 0:
                break
            expert[r] = b
        new_peak = float(_row_loads(expert, gpu, load, num_gpus).max())
        if new_peak >= peak * (1 - 1e-12):
            break
        peak = new_peak
    order = np.argsort(gpu, kind="stable")  # back to slot order: GPU g's replicas in its block
    return expert[order]


def preserve_slots(row: np.ndarray, old_row: np.ndarray, num_gpus: int) -> np.ndarray:
    """Reorder each GPU's block of `row` so that experts it held in `old_row` keep their slots.

    row, old_row: [P]. The multiset of experts on each GPU is unchanged."""
    slots = row.size // num_gpus
    out = row.copy()
    for g in range(num_gpus):
        block, old = row[g * slots:(g + 1) * slots].tolist(), old_row[g * slots:(g + 1) * slots].tolist()
        placed: list[int | None] = [None] * slots
        for s, e in enumerate(old):
            if e in block:
                block.remove(e)
                placed[s] = e
        rest = iter(block)
        out[g * slots:(g + 1) * slots] = [e if e is not None else next(rest) for e in placed]
    return out


def moved_replicas(row: np.ndarray, old_row: np.ndarray, num_gpus: int) -> int:
    """Replicas in `row` that their GPU did not hold in `old_row` (weights to copy). row, old_row: [P]."""
    slots = row.size // num_gpus
    moved = 0
    for g in range(num_gpus):
        old = old_row[g * slots:(g + 1) * slots].tolist()
        for e in row[g * slots:(g + 1) * slots].tolist():
            if e in old:
                old.remove(e)
            else:
                moved += 1
    return moved


def align_to_old(row: np.ndarray, old_row: np.ndarray, num_gpus: int, num_experts: int) -> np.ndarray:
    """Relabel whole GPUs of `row` to keep as many replicas where `old_row` has them, then keep
    experts in their old slots. row, old_row: [P]; balance is unchanged."""
    slots = row.size // num_gpus
    gpu = np.arange(row.size) // slots
    old = LayerPlan(old_row, gpu, np.ones(row.size))
    price = move_price(old, pair_seconds_per_gb(build_topology(num_gpus)), num_experts)  # [experts, G]
    relabelled = align_gpus(LayerPlan(row, gpu, np.ones(row.size)), price)
    order = np.argsort(relabelled.gpu, kind="stable")
    return preserve_slots(relabelled.expert[order], old_row, num_gpus)


def check_slot_problem(load: np.ndarray, num_slots: int, num_gpus: int, num_groups: int, num_nodes: int,
                       old_map: np.ndarray | None) -> None:
    """Reject what no engine map can satisfy, naming the number at fault. load: [layers, experts];
    old_map: [layers, P] or None."""
    if load.ndim != 2 or 0 in load.shape:
        raise MoelessError(f"loads must be a non-empty [layers, experts] matrix, got shape {list(load.shape)}")
    if not np.all(np.isfinite(load)) or (load < 0).any():
        raise MoelessError("loads must be finite and non-negative")
    num_layers, num_experts = load.shape
    if num_gpus < 1 or num_slots % num_gpus:
        raise MoelessError(f"{num_slots} physical slots do not split evenly over {num_gpus} ranks")
    if num_slots < num_experts:
        raise MoelessError(f"{num_slots} physical slots cannot hold {num_experts} experts once each")
    if num_nodes < 1 or num_gpus % num_nodes:
        raise MoelessError(f"{num_gpus} ranks do not split evenly over {num_nodes} nodes")
    if num_groups < 1 or (num_groups % num_nodes == 0 and num_experts % num_groups):
        raise MoelessError(f"{num_experts} experts do not split into {num_groups} expert groups")
    if old_map is not None:
        if old_map.shape != (num_layers, num_slots):
            raise MoelessError(f"the current map has shape {list(old_map.shape)}, expected "
                               f"[{num_layers}, {num_slots}] (layers x physical slots)")
        if old_map.size and (old_map.min() < 0 or old_map.max() >= num_experts):
            raise MoelessError(f"the current map has expert ids outside [0, {num_experts})")


def planner_start(load: np.ndarray, experts: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """A row from moeless's greedy planner: its replica counts, the spare slots given to the expert
    with the most load per replica, replicas packed heaviest first (P / G per GPU).

    load: [all experts]; experts: [n] the logical experts this row holds. Returns [num_slots] ids."""
    sub = load[experts]
    problem = PlanningProblem(num_gpus=num_gpus, slots_per_gpu=num_slots // num_gpus)
    plans = greedy_candidates(sub, problem, None)
    best = min(plans, key=lambda p: float(p.gpu_loads(sub, num_gpus).max()))
    counts = best.replica_counts(sub.size).astype(np.float64)
    while counts.sum() < num_slots:
        counts[np.argmax(sub / counts)] += 1
    replicas = np.repeat(np.arange(sub.size), counts.astype(np.int64))  # [P] local ids
    pack, rank = balanced_packing((sub / counts)[replicas][None, :], num_gpus)
    row = np.empty(num_slots, dtype=np.int64)
    row[pack[0] * (num_slots // num_gpus) + rank[0]] = experts[replicas]
    return row


def _block_plan(load: np.ndarray, default: np.ndarray, old: np.ndarray | None, num_gpus: int,
                options: SlotMapOptions) -> tuple[np.ndarray, int]:
    """One node's block (or the whole row). load: [experts]; default, old: [block slots].
    Returns (row, replicas moved)."""
    present = np.unique(default)
    starts = [improve_row(row, load, num_gpus, options)
              for row in (default, planner_start(load, present, default.size, num_gpus))]
    if old is not None and set(old.tolist()) == set(default.tolist()):
        starts.append(improve_row(old, load, num_gpus, options))
    peaks = [float(slot_gpu_loads(s, load, num_gpus).max()) for s in starts]
    if old is None:
        return starts[int(np.argmin(peaks))], 0
    default_peak = float(slot_gpu_loads(default, load, num_gpus).max())
    cap = min(min(peaks) * (1 + options.move_slack), default_peak) * (1 + 1e-12)
    best: tuple[int, float, np.ndarray] | None = None
    for row, peak in zip(starts, peaks):
        if peak > cap:
            continue
        row = align_to_old(row, old, num_gpus, load.size)
        moved = moved_replicas(row, old, num_gpus)
        if best is None or (moved, peak) < best[:2]:
            best = (moved, peak, row)
    assert best is not None  # the best start is always within the cap
    return best[2], best[0]


def plan_slot_map(load: np.ndarray, num_slots: int, num_gpus: int, num_groups: int = 1, num_nodes: int = 1,
                  old_map: np.ndarray | None = None, options: SlotMapOptions | None = None) -> SlotMapResult:
    """Plan an engine slot map. load: [layers, experts] tokens; old_map: [layers, P] now loaded.

    num_groups / num_nodes follow DeepSeek EPLB: expert groups are packed onto nodes when
    num_groups % num_nodes == 0 (hierarchical), otherwise one global pool. Returns phy2log
    [layers, P] with P = num_slots, slot p on GPU p // (P / num_gpus)."""
    options = options or SlotMapOptions()
    load = np.asarray(load, dtype=np.float64)
    old_map = None if old_map is None else np.asarray(old_map, dtype=np.int64)
    check_slot_problem(load, num_slots, num_gpus, num_groups, num_nodes, old_map)
    if num_groups % num_nodes:
        num_groups = num_nodes = 1
    default, _, _ = rebalance_experts(load, num_slots, num_groups, num_nodes, num_gpus)
    blocks = num_nodes if options.keep_groups_on_nodes else 1
    width = num_slots // blocks
    rows, moved = [], []
    for i, w in enumerate(load):
        parts = []
        for n in range(blocks):
            part = slice(n * width, (n + 1) * width)
            old = None if old_map is None else old_map[i, part]
            parts.append(_block_plan(w, default[i, part], old, num_gpus // blocks, options))
        rows.append(np.concatenate([p[0] for p in parts]))
        moved.append(sum(p[1] for p in parts))
    phy2log = np.stack(rows).astype(np.int64)
    peak = np.array([slot_gpu_loads(r, w, num_gpus).max() for r, w in zip(phy2log, load)])
    default_peak = np.array([slot_gpu_loads(r, w, num_gpus).max() for r, w in zip(default, load)])
    return SlotMapResult(phy2log, default_peak, peak, np.asarray(moved, dtype=np.int64))


def _previous_row(previous: LayerPlan | None, num_gpus: int, num_slots: int) -> np.ndarray | None:
    """A previous plan as a slot row [P] when every GPU held exactly P / G replicas, else None."""
    if previous is None or previous.num_replicas != num_slots:
        return None
    if not np.all(previous.slots_used(num_gpus) == num_slots // num_gpus):
        return None
    return previous.expert[np.argsort(previous.gpu, kind="stable")]


def even_split_layer(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None,
                     seconds: float) -> LayerPlan:
    """`moeless plan --solver even-split`: one layer's slot map, equal shares. load: [experts].

    All slots of the largest multiple of G within the budget are filled, as engines load them;
    expert groups follow EPLB's (one group per node when N > 1 and E % N == 0)."""
    from moeless_cli.planning.solvers.eplb import eplb_replica_count

    num_experts, num_gpus, nodes = load.size, problem.num_gpus, problem.num_nodes
    num_slots = eplb_replica_count(num_experts, problem.max_replicas(num_experts), num_gpus)
    groups = nodes if nodes > 1 and num_experts % nodes == 0 else 1
    old = _previous_row(previous, num_gpus, num_slots)
    row = plan_slot_map(load[None, :], num_slots, num_gpus, groups, nodes if groups > 1 else 1,
                        None if old is None else old[None, :]).phy2log[0]
    counts = np.bincount(row, minlength=num_experts)
    return LayerPlan(row, np.arange(num_slots, dtype=np.int64) // (num_slots // num_gpus), 1.0 / counts[row])
