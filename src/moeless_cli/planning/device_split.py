"""Cost-aware dispatch split as fixed-shape array ops: the numpy twin of `serving/device_split.py`.

The simulator (through the online policy) and serve's runtime must decide the same split, and the
runtime must decide it on the device that holds the gate's counts, with no host round trip. So the
split is written once as a fixed sequence of whole-array operations (no data-dependent control flow,
no loop over experts, tokens or GPUs) and twice in code: here in numpy, in `serving/device_split.py`
in torch, operation for operation. Everything is int64 (costs in fixed point, `COST_SCALE` units per
token), so sums are exact in any order (a GPU's scatter-add is not ordered) and both twins return
identical integers.

The cost charged is the physical time model's (`sim/timemodel.py`): a replica serving t > 0 tokens
costs max(entry, tile * ceil(t / tile)) token-times (its weights are streamed once; its GEMM runs
whole row tiles), 0 when t = 0; a GPU's work is the sum over its used replicas and the layer waits
for the busiest GPU. The split:
  a. level L = max(entry, tile, sum_e cost(n_e) / G): the busiest GPU's work if nothing were split
     and the work spread perfectly;
  b. each expert uses its first k_e = clamp(ceil(n_e / L), 1, R_e) replicas in preference order (a
     decode batch keeps every expert whole, no extra weight reads; a prefill batch spreads);
  c. its tokens split over them in whole tiles (only the last piece may be partial);
  d. `passes` refinement passes on the true loads: every expert offers to move tokens from its piece
     on its busiest GPU to its replica on its least busy one (half the gap in whole tiles, or the
     whole piece, whichever leaves the pair's busier GPU lower); only the largest gap moves into a
     given GPU per pass, moves out of one GPU share the gap, so simultaneous moves do not overshoot.
     The best split seen (lowest busiest GPU) is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COST_SCALE = 1024  # fixed-point units per token of work: entry costs keep 1/1024 token of precision
DEFAULT_PASSES = 4  # refinement passes (each a fixed number of array operations)
_BIG = np.iinfo(np.int64).max // 4  # a key below every real one (negated)
DECISION_KERNELS = 0  # set below: aten ops of one device_quotas_torch + pair_replica call (tests count them)


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
    """tokens: any shape, whole tokens. Fixed-point cost max(entry, tile * ceil(t / tile)) * COST_SCALE
    for t > 0, 0 for t = 0 (entry already in fixed point)."""
    tiles = (tokens + (tile - 1)) // tile
    return np.maximum(tiles * (tile * COST_SCALE), (tokens > 0) * entry)


def gpu_work(cost: np.ndarray, gpu0: np.ndarray, num_gpus: int) -> np.ndarray:
    """cost, gpu0: [E, K] (gpu0: GPU ids with -1 clamped to 0; those cells cost 0). Work per GPU: [G]."""
    work = np.zeros(num_gpus, dtype=np.int64)
    np.add.at(work, gpu0.reshape(-1), cost.reshape(-1))
    return work


def initial_split(counts: np.ndarray, valid: np.ndarray, entry: int, tile: int, num_gpus: int) -> np.ndarray:
    """counts: [E]; valid: [E, K] bool (a replica in that column; columns filled from the left).
    Steps a-c of the module docstring: quotas [E, K] int64."""
    whole = replica_cost(counts, entry, tile)
    level = np.maximum(whole.sum() // num_gpus, max(entry, tile * COST_SCALE))
    wanted = (counts * COST_SCALE + (level - 1)) // level
    used = np.minimum(np.maximum(wanted, 1), valid.sum(axis=1))  # [E] columns k_e
    tiles = (counts + (tile - 1)) // tile
    column = np.arange(valid.shape[1])
    cut = np.minimum(counts[:, None], tile * (((column + 1)[None, :] * tiles[:, None]) // used[:, None]))
    cut = np.where(column[None, :] < used[:, None], cut, counts[:, None])  # [E, K] cumulative ends
    return np.diff(cut, axis=1, prepend=0)


def _pick(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """key: [E, K] unique per row where it matters. (argmax column [E, 1], its key [E, 1])."""
    column = np.argmax(key, axis=1)[:, None]
    return column, np.take_along_axis(key, column, axis=1)


def _choose_move(quotas, cost, donor, receiver, top, bottom, share, entry, tile):
    """Per expert [E, 1]: tokens to move from column `donor` to `receiver` (half the shared gap in
    whole tiles, or the whole donor piece, whichever leaves the pair's busier GPU lower) and the
    pair's busier GPU's work after it."""
    have = np.take_along_axis(quotas, donor, axis=1)
    got = np.take_along_axis(quotas, receiver, axis=1)
    rest_from = top - np.take_along_axis(cost, donor, axis=1)
    rest_to = bottom - np.take_along_axis(cost, receiver, axis=1)
    half = np.minimum(have, tile * np.maximum(share // (tile * COST_SCALE), 1))
    peak_half = np.maximum(rest_from + replica_cost(have - half, entry, tile), rest_to + replica_cost(got + half, entry, tile))
    peak_all = np.maximum(rest_from, rest_to + replica_cost(got + have, entry, tile))
    take_all = peak_all < peak_half
    return np.where(take_all, have, half), np.where(take_all, peak_all, peak_half)


def refine_pass(quotas: np.ndarray, gpu0: np.ndarray, valid: np.ndarray, entry: int, tile: int,
                num_gpus: int) -> np.ndarray:
    """One refinement pass (step d): new quotas [E, K]. quotas, gpu0: [E, K]; valid: [E, K] bool.
    No GPU ends above the busiest GPU's work before the pass: a GPU takes at most one move, which
    leaves both of its ends below the donor's work, and the other moves only take work away."""
    num_experts, width = quotas.shape
    cost = replica_cost(quotas, entry, tile)
    work = gpu_work(cost, gpu0, num_gpus)
    cell_work = work[gpu0]  # [E, K] work of each cell's GPU
    column = np.arange(width)[None, :]
    # donor: the used column on the busiest GPU; receiver: the valid column on the least busy GPU,
    # an unused one charged half its entry cost (a whole entry ties it with the used ones it would
    # relieve; none smears small experts); ties: the first column
    donor, donor_key = _pick(np.where(quotas > 0, cell_work * width + (width - 1 - column), -1))
    receiver, _ = _pick(np.where(valid, -((2 * cell_work + np.where(quotas > 0, 0, entry)) * width + column), -_BIG))
    top = donor_key // width  # [E, 1] the donor GPU's work
    g_from = np.take_along_axis(gpu0, donor, axis=1)
    g_to = np.take_along_axis(gpu0, receiver, axis=1)
    bottom = work[g_to]
    mover = (donor_key >= 0) & (g_from != g_to) & (top > bottom)
    leaving = np.zeros(num_gpus, dtype=np.int64)
    np.add.at(leaving, g_from[:, 0], mover[:, 0].astype(np.int64))
    share = (top - bottom) // (2 * np.maximum(leaving[g_from], 1))  # moves out of one GPU share its gap
    amount, peak = _choose_move(quotas, cost, donor, receiver, top, bottom, share, entry, tile)
    # one move into each GPU: the one from the busiest donor (ties: the lowest expert)
    key = np.where(mover & (amount > 0) & (peak < top), top * num_experts + (num_experts - 1 - np.arange(num_experts)[:, None]), -1)
    best = np.full(num_gpus, -1, dtype=np.int64)
    np.maximum.at(best, g_to[:, 0], key[:, 0])
    amount = np.where((key >= 0) & (key == best[g_to]), amount, 0)
    return quotas - amount * (column == donor) + amount * (column == receiver)


def device_quotas(counts: np.ndarray, table: ReplicaTable, entry_tokens: float, tile_tokens: int,
                  passes: int = DEFAULT_PASSES) -> np.ndarray:
    """The split of one layer: whole tokens per replica column [E, K] int64 (row sums == counts,
    0 where table.gpu == -1). counts: [E] int64 token-expert pairs per expert; every expert with
    counts > 0 needs a replica in column 0 (the caller's `replica_table` guarantees it)."""
    counts = np.asarray(counts, dtype=np.int64)
    entry = int(round(entry_tokens * COST_SCALE))
    valid = table.gpu >= 0
    gpu0 = np.maximum(table.gpu, 0)
    quotas = initial_split(counts, valid, entry, tile_tokens, table.num_gpus)
    for _ in range(passes):
        quotas = refine_pass(quotas, gpu0, valid, entry, tile_tokens, table.num_gpus)
    return quotas
