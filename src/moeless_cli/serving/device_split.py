"""The dispatch split on the device that holds the gate's counts: the torch twin of
`planning/device_split.py` (read its docstring for the algorithm), operation for operation, so both
return identical integers. Every operation has a shape fixed by (E, K, G, passes) and no value is
read back to the host (no `.item()`, `.tolist()`, `.cpu()`, no Python branch on a tensor), so one
layer's decision is a fixed sequence of `DECISION_KERNELS` kernel launches that never waits for the
GPU: counts [E] -> quotas [E, K] -> each (token, slot) pair's replica column.
"""

from __future__ import annotations

import torch

from moeless_cli.planning.device_split import COST_SCALE, DEFAULT_PASSES

_BIG = torch.iinfo(torch.int64).max // 4  # a key below every real one (negated)


def replica_cost(tokens: torch.Tensor, entry: int, tile: int) -> torch.Tensor:
    """tokens: any shape, whole tokens. Fixed-point cost max(entry, tile * ceil(t / tile)) * COST_SCALE
    for t > 0, 0 for t = 0 (entry already in fixed point)."""
    tiles = (tokens + (tile - 1)) // tile
    return torch.maximum(tiles * (tile * COST_SCALE), (tokens > 0) * entry)


def gpu_work(cost: torch.Tensor, gpu0: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """cost, gpu0: [E, K] (gpu0: GPU ids with -1 clamped to 0; those cells cost 0). Work per GPU: [G]."""
    work = torch.zeros(num_gpus, dtype=torch.int64, device=cost.device)
    return work.scatter_add_(0, gpu0.reshape(-1), cost.reshape(-1))


def initial_split(counts: torch.Tensor, valid: torch.Tensor, entry: int, tile: int, num_gpus: int) -> torch.Tensor:
    """counts: [E]; valid: [E, K] bool (a replica in that column; columns filled from the left).
    Steps a-c of the algorithm: quotas [E, K] int64."""
    whole = replica_cost(counts, entry, tile)
    level = torch.clamp_min(whole.sum() // num_gpus, max(entry, tile * COST_SCALE))
    wanted = (counts * COST_SCALE + (level - 1)) // level
    used = torch.minimum(torch.clamp_min(wanted, 1), valid.sum(dim=1))  # [E] columns k_e
    tiles = (counts + (tile - 1)) // tile
    column = torch.arange(valid.shape[1], device=counts.device)
    cut = torch.minimum(counts[:, None], tile * (((column + 1)[None, :] * tiles[:, None]) // used[:, None]))
    cut = torch.where(column[None, :] < used[:, None], cut, counts[:, None])  # [E, K] cumulative ends
    return torch.diff(cut, dim=1, prepend=torch.zeros_like(cut[:, :1]))


def _pick(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """key: [E, K] unique per row where it matters. (argmax column [E, 1], its key [E, 1])."""
    best, column = torch.max(key, dim=1, keepdim=True)
    return column, best


def _choose_move(quotas, cost, donor, receiver, top, bottom, share, entry, tile):
    """Per expert [E, 1]: tokens to move from column `donor` to `receiver` and the pair's busier
    GPU's work after it (as the numpy twin's)."""
    have = torch.gather(quotas, 1, donor)
    got = torch.gather(quotas, 1, receiver)
    rest_from = top - torch.gather(cost, 1, donor)
    rest_to = bottom - torch.gather(cost, 1, receiver)
    half = torch.minimum(have, tile * torch.clamp_min(share // (tile * COST_SCALE), 1))
    peak_half = torch.maximum(rest_from + replica_cost(have - half, entry, tile),
                              rest_to + replica_cost(got + half, entry, tile))
    peak_all = torch.maximum(rest_from, rest_to + replica_cost(got + have, entry, tile))
    take_all = peak_all < peak_half
    return torch.where(take_all, have, half), torch.where(take_all, peak_all, peak_half)


def refine_pass(quotas: torch.Tensor, gpu0: torch.Tensor, valid: torch.Tensor, entry: int, tile: int,
                num_gpus: int) -> torch.Tensor:
    """One refinement pass: new quotas [E, K]. quotas, gpu0: [E, K]; valid: [E, K] bool."""
    num_experts, width = quotas.shape
    cost = replica_cost(quotas, entry, tile)
    work = gpu_work(cost, gpu0, num_gpus)
    cell_work = work[gpu0]  # [E, K] work of each cell's GPU
    column = torch.arange(width, device=quotas.device)[None, :]
    donor, donor_key = _pick(torch.where(quotas > 0, cell_work * width + (width - 1 - column), -1))
    opening = torch.where(quotas > 0, 0, entry)
    receiver, _ = _pick(torch.where(valid, -((2 * cell_work + opening) * width + column), -_BIG))
    top = donor_key // width  # [E, 1] the donor GPU's work
    g_from = torch.gather(gpu0, 1, donor)
    g_to = torch.gather(gpu0, 1, receiver)
    bottom = work[g_to]
    mover = (donor_key >= 0) & (g_from != g_to) & (top > bottom)
    leaving = torch.zeros(num_gpus, dtype=torch.int64, device=quotas.device)
    leaving.scatter_add_(0, g_from[:, 0], mover[:, 0].long())
    share = (top - bottom) // (2 * torch.clamp_min(leaving[g_from], 1))
    amount, peak = _choose_move(quotas, cost, donor, receiver, top, bottom, share, entry, tile)
    expert = torch.arange(num_experts, device=quotas.device)[:, None]
    key = torch.where(mover & (amount > 0) & (peak < top), top * num_experts + (num_experts - 1 - expert), -1)
    best = torch.full((num_gpus,), -1, dtype=torch.int64, device=quotas.device)
    best.scatter_reduce_(0, g_to[:, 0], key[:, 0], reduce="amax")
    amount = torch.where((key >= 0) & (key == best[g_to]), amount, 0)
    return quotas - amount * (column == donor) + amount * (column == receiver)


def device_quotas_torch(counts: torch.Tensor, table_gpu: torch.Tensor, num_gpus: int, entry_tokens: float,
                        tile_tokens: int, passes: int = DEFAULT_PASSES) -> torch.Tensor:
    """The split of one layer on counts' device: whole tokens per replica column [E, K] int64 (row
    sums == counts, 0 where table_gpu == -1). counts: [E] int64; table_gpu: [E, K] int64 (the
    `ReplicaTable.gpu` of `planning.device_split.replica_table`, on the same device)."""
    entry = int(round(entry_tokens * COST_SCALE))
    valid = table_gpu >= 0
    gpu0 = torch.clamp_min(table_gpu, 0)
    quotas = initial_split(counts, valid, entry, tile_tokens, num_gpus)
    for _ in range(passes):  # a fixed count: no data-dependent loop
        quotas = refine_pass(quotas, gpu0, valid, entry, tile_tokens, num_gpus)
    return quotas


def pair_replica(flat_expert: torch.Tensor, quotas: torch.Tensor) -> torch.Tensor:
    """flat_expert: [P] int64 expert of each (token, slot) pair; quotas: [E, K] with row sums equal
    to each expert's pair count. Returns [P] the replica column of each pair: an expert's pairs, in
    their order in flat_expert, fill column 0's quota, then column 1's, ... Sorting the pairs by
    expert (stably) lines them up with the row-major running sum of the quotas, so a pair's cell is
    the first whose running sum exceeds its position."""
    order = torch.argsort(flat_expert, stable=True)
    ends = torch.cumsum(quotas.reshape(-1), dim=0)  # [E * K] cell ends in the sorted pair order
    position = torch.arange(flat_expert.numel(), device=flat_expert.device)
    cell = torch.searchsorted(ends, position, right=True)
    column = torch.empty_like(flat_expert)
    column[order] = cell % quotas.shape[1]
    return column
