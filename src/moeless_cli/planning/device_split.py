"""Cost-aware dispatch split as fixed-shape array ops: the numpy twin of `serving/device_split.py`.

The simulator (through the online policy) and serve's runtime must decide the same split, and the
runtime must decide it on the device that holds the gate's counts, with no host round trip. So the
split is written once as a fixed sequence of whole-array operations (no data-dependent control flow,
no loop over experts, tokens or GPUs) and twice in code: here in numpy, in `serving/device_split.py`
in torch, step for step. Everything is int64 (costs in fixed point, `COST_SCALE` units per token),
so sums are exact in any order (a GPU's scatter-add is not ordered) and both twins return identical
integers. The host twin may stop early (a pass that moves nothing is a fixed point) and indexes rows
directly, since on a CPU each numpy call's overhead, not the arithmetic, is the cost.

The cost charged is the physical time model's (`sim/timemodel.py`): a replica serving t > 0 tokens
costs max(entry, tile * ceil(t / tile)) token-times (its weights are streamed once; its GEMM runs
whole row tiles), 0 when t = 0; a GPU's work is the sum over its used replicas and the layer waits
for the busiest GPU. The split:
  a. each expert uses its first k_e = clamp(floor(n_e / max(entry, tile)), 1, R_e) replicas in
     preference order: pieces of at least a weight read's worth of tokens, which cost about their
     compute, so splitting adds at most a tile per piece (a decode batch keeps every expert whole,
     no extra weight reads; a prefill batch starts spread as the placement intended);
  b. its tokens split over them in whole tiles (only the last piece may be partial), so no replica
     pays a partial tile twice;
  c. `passes` refinement passes on the true loads: every expert offers to move tokens from its piece
     on its busiest GPU to its replica on its least busy one (half the gap in whole tiles, or the
     whole piece, whichever leaves the pair's busier GPU lower; an unused replica charged its entry);
     only the move from the busiest donor enters a given GPU per pass, so simultaneous moves cannot
     overshoot: the busiest GPU's work never rises from one pass to the next.
A first version sized k_e by a level L = sum_e cost(n_e) / G (one replica per expert in the 64 x 8
prefill case) and started 1.22-1.96x off the lower bound instead of 1.22-1.38x, needing twice the
passes; damping moves by the number leaving a GPU changed nothing measurable, so it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COST_SCALE = 1024  # fixed-point units per token of work: entry costs keep 1/1024 token of precision
DEFAULT_PASSES = 4  # refinement passes (each a fixed number of array operations)
_BIG = np.iinfo(np.int64).max // 4  # a key below every real one (negated)
DECISION_KERNELS = 323  # aten ops other than views (each at most one kernel launch) of one device_quotas_torch +
# pair_replica call at DEFAULT_PASSES, whatever the shapes (tests/test_device_split.py counts them)


@dataclass(frozen=True)
class ReplicaTable:
    gpu: np.ndarray  # [E, K] int64: GPU of each expert's k-th replica in preference order, -1 = no replica
    replica: np.ndarray  # [E, K] int64: index of that replica in the flat (expert, gpu) arrays, -1 = none
    num_gpus: int  # G


def replica_table(expert: np.ndarray, gpu: np.ndarray, num_experts: int, num_gpus: int,
                  preference: np.ndarray | None = None) -> ReplicaTable:
    """Each expert's replicas as a row, in the order the split should use them (host code, run when
    the warm set changes). expert, gpu: [R]; preference: [R], higher first (ties: lower replica
    index first); None keeps the flat order."""
    expert = np.asarray(expert, dtype=np.int64)
    rank_key = np.zeros(expert.size) if preference is None else -np.asarray(preference, dtype=np.float64)
    order = np.lexsort((np.arange(expert.size), rank_key, expert))  # by expert, preference, index
    grouped = expert[order]
    column = np.arange(order.size) - np.searchsorted(grouped, grouped)
    width = max(1, int(np.bincount(expert, minlength=num_experts).max(initial=1)))
    table_gpu = np.full((num_experts, width), -1, dtype=np.int64)
    table_replica = np.full((num_experts, width), -1, dtype=np.int64)
    table_gpu[grouped, column] = np.asarray(gpu, dtype=np.int64)[order]
    table_replica[grouped, column] = order
    return ReplicaTable(table_gpu, table_replica, num_gpus)


def quotas_to_replicas(quotas: np.ndarray, table: ReplicaTable) -> np.ndarray:
    """quotas: [E, K] tokens per replica column. Tokens per flat replica: [R] int64."""
    valid = table.replica >= 0
    out = np.zeros(int(table.replica.max(initial=-1)) + 1, dtype=np.int64)
    out[table.replica[valid]] = quotas[valid]
    return out


def replica_cost(tokens: np.ndarray, entry: int, tile: int) -> np.ndarray:
    """tokens: any shape, whole tokens >= 0. Fixed-point cost of a replica serving them:
    max(entry, tile * ceil(t / tile) * COST_SCALE) for t > 0, 0 for t = 0 (entry in fixed point)."""
    tiles = (tokens + (tile - 1)) // tile
    return np.maximum(tiles * (tile * COST_SCALE), np.minimum(tokens, 1) * entry)


def gpu_work(cost: np.ndarray, gpu0: np.ndarray, num_gpus: int) -> np.ndarray:
    """cost, gpu0: [E, K] (gpu0: GPU ids with -1 clamped to 0; those cells cost 0). Work per GPU: [G].
    bincount sums in float64, exact for the integers here (far below 2**53)."""
    return np.bincount(gpu0.reshape(-1), weights=cost.reshape(-1), minlength=num_gpus).astype(np.int64)


def initial_split(counts: np.ndarray, valid: np.ndarray, entry: int, tile: int) -> np.ndarray:
    """counts: [E]; valid: [E, K] bool (columns filled from the left). Steps a-b: quotas [E, K] int64."""
    wanted = (counts * COST_SCALE) // max(entry, tile * COST_SCALE)
    used = np.minimum(np.maximum(wanted, 1), valid.sum(axis=1))  # [E] columns k_e
    tiles = (counts + (tile - 1)) // tile
    column = np.arange(valid.shape[1])
    cut = np.minimum(counts[:, None], tile * (((column + 1)[None, :] * tiles[:, None]) // used[:, None]))
    cut = np.where(column[None, :] < used[:, None], cut, counts[:, None])  # [E, K] cumulative ends
    cut[:, 1:] -= cut[:, :-1].copy()  # cumulative ends -> pieces (np.diff costs several times more here)
    return cut


def _choose_move(quotas, cost, rows, donor, receiver, top, bottom, entry, tile):
    """Per expert [E]: (tokens to move from column `donor` to `receiver`, the pair's busier GPU's
    work after the move): half the gap in whole tiles (at least one), or the whole donor piece,
    whichever leaves the pair's busier GPU lower. quotas, cost: [E, K]; rows: [E] 0..E-1; the rest [E].
    (Plain fancy indexing, not take_along_axis: this runs per layer on the host, where each call's
    overhead counts.)"""
    have = quotas[rows, donor]
    got = quotas[rows, receiver]
    rest_from = top - cost[rows, donor]
    rest_to = bottom - cost[rows, receiver]
    half = np.minimum(have, tile * np.maximum((top - bottom) // (2 * tile * COST_SCALE), 1))
    after = replica_cost(np.stack([have - half, got + half, got + have]), entry, tile)  # [3, E]
    peak_half = np.maximum(rest_from + after[0], rest_to + after[1])
    peak_all = np.maximum(rest_from, rest_to + after[2])
    return np.where(peak_all < peak_half, have, half), np.minimum(peak_all, peak_half)


@dataclass(frozen=True)
class _Frame:
    """What every refinement pass of one call shares (computed once: per-call overhead is the host's cost)."""

    gpu0: np.ndarray  # [E, K] GPU of each cell, -1 clamped to 0 (those cells never hold tokens)
    rows: np.ndarray  # [E] 0..E-1
    column_rank: np.ndarray  # [1, K] width - 1 - column: ties go to the first column
    closed: np.ndarray  # [E, K] the column where a replica is, _BIG + the column where none
    unused_entry: int  # entry * width: an unused receiver's charge in key units
    num_gpus: int  # G


def refine_pass(quotas: np.ndarray, frame: _Frame, entry: int, tile: int) -> np.ndarray:
    """One refinement pass (step c): new quotas [E, K] (quotas: [E, K]). No GPU ends above the busiest
    GPU's work before the pass: a GPU takes at most one move, which leaves both its ends below the
    donor's work, and other moves only take work away."""
    num_experts, width = quotas.shape
    rows, gpu0 = frame.rows, frame.gpu0
    cost = replica_cost(quotas, entry, tile)
    work = gpu_work(cost, gpu0, frame.num_gpus)
    cell_work = work[gpu0] * width  # [E, K] each cell's GPU's work, room for a column tie-break
    used = quotas > 0  # `closed` holds the column too: receiver keys stay distinct
    # donor: the used column on the busiest GPU (unused ones keep distinct negative keys); receiver:
    # the valid column on the least busy GPU, an unused one charged half its entry cost (a whole
    # entry would tie it with the used ones it should relieve); ties: the first column
    donor_key = frame.column_rank + np.where(used, cell_work, -width)
    donor = np.argmax(donor_key, axis=1)  # [E]
    top = donor_key[rows, donor] // width  # [E] the donor GPU's work
    receiver = np.argmin(2 * cell_work + frame.unused_entry * ~used + frame.closed, axis=1)  # [E]
    g_to = gpu0[rows, receiver]  # [E]
    amount, peak = _choose_move(quotas, cost, rows, donor, receiver, top, work[g_to], entry, tile)
    # one move into each GPU: the one from the busiest donor (ties: the lowest expert)
    key = np.where(peak < top, top * num_experts + (num_experts - 1 - rows), -1)
    best = np.full(frame.num_gpus, -1, dtype=np.int64)
    np.maximum.at(best, g_to, key)
    amount = amount * ((key == best[g_to]) & (key >= 0))
    moved = quotas.copy()
    moved[rows, donor] -= amount
    moved[rows, receiver] += amount  # (donor == receiver only where amount is 0)
    return moved


def device_quotas(counts: np.ndarray, table: ReplicaTable, entry_tokens: float, tile_tokens: int,
                  passes: int = DEFAULT_PASSES) -> np.ndarray:
    """The split of one layer: whole tokens per replica column [E, K] int64 (row sums == counts,
    0 where table.gpu == -1). counts: [E] int64 token-expert pairs per expert; every expert with
    counts > 0 needs a replica in column 0 (the caller's `replica_table` guarantees it). A pass that
    moves nothing is a fixed point (the next pass sees the same quotas), so the host stops there with
    the same integers as the torch twin's fixed `passes`."""
    counts = np.asarray(counts, dtype=np.int64)
    entry = int(round(entry_tokens * COST_SCALE))
    valid = table.gpu >= 0
    width = valid.shape[1]
    frame = _Frame(np.maximum(table.gpu, 0), np.arange(valid.shape[0]), width - 1 - np.arange(width)[None, :],
                   (~valid) * _BIG + np.arange(width)[None, :], entry * width, table.num_gpus)
    quotas = initial_split(counts, valid, entry, tile_tokens)
    if width == 1:  # one replica per expert: nothing can move
        return quotas
    for _ in range(passes):
        moved = refine_pass(quotas, frame, entry, tile_tokens)
        if np.array_equal(moved, quotas):
            break
        quotas = moved
    return quotas
