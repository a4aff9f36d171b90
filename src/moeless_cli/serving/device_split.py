"""The dispatch split on the device that holds the gate's counts: the torch twin of
`planning/device_split.py` (read its docstring for the algorithm), step for step, so both
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
    """tokens: any shape, whole tokens >= 0. Fixed-point cost of a replica serving them:
    max(entry, tile * ceil(t / tile) * COST_SCALE) for t > 0, 0 for t = 0 (entry in fixed point)."""
    tiles = (tokens + (tile - 1)) // tile
    return torch.maximum(tiles * (tile * COST_SCALE), torch.clamp_max(tokens, 1) * entry)


def gpu_work(cost: torch.Tensor, gpu0: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """cost, gpu0: [E, K] (gpu0: GPU ids with -1 clamped to 0; those cells cost 0). Work per GPU: [G]."""
    work = torch.zeros(num_gpus, dtype=torch.int64, device=cost.device)
    return work.scatter_add_(0, gpu0.reshape(-1), cost.reshape(-1))


def initial_split(counts: torch.Tensor, valid: torch.Tensor, entry: int, tile: int) -> torch.Tensor:
    """counts: [E]; valid: [E, K] bool (columns filled from the left). Steps a-b: quotas [E, K] int64."""
    wanted = (counts * COST_SCALE) // max(entry, tile * COST_SCALE)
    used = torch.minimum(torch.clamp_min(wanted, 1), valid.sum(dim=1))  # [E] columns k_e
    tiles = (counts + (tile - 1)) // tile
    column = torch.arange(valid.shape[1], device=counts.device)
    cut = torch.minimum(counts[:, None], tile * (((column + 1)[None, :] * tiles[:, None]) // used[:, None]))
    cut = torch.where(column[None, :] < used[:, None], cut, counts[:, None])  # [E, K] cumulative ends
    return torch.diff(cut, dim=1, prepend=torch.zeros_like(cut[:, :1]))


def _choose_move(quotas, cost, donor, receiver, top, bottom, entry, tile):
    """Per expert [E, 1]: (tokens to move from column `donor` to `receiver`, the pair's busier GPU's
    work after the move), as the numpy twin's."""
    have = torch.gather(quotas, 1, donor)
    got = torch.gather(quotas, 1, receiver)
    rest_from = top - torch.gather(cost, 1, donor)
    rest_to = bottom - torch.gather(cost, 1, receiver)
    half = torch.minimum(have, tile * torch.clamp_min((top - bottom) // (2 * tile * COST_SCALE), 1))
    after = replica_cost(torch.cat([have - half, got + half, got + have], dim=1), entry, tile)
    peak_half = torch.maximum(rest_from + after[:, 0:1], rest_to + after[:, 1:2])
    peak_all = torch.maximum(rest_from, rest_to + after[:, 2:3])
    return torch.where(peak_all < peak_half, have, half), torch.minimum(peak_all, peak_half)


def refine_pass(quotas: torch.Tensor, gpu0: torch.Tensor, closed: torch.Tensor, entry: int, tile: int,
                num_gpus: int) -> torch.Tensor:
    """One refinement pass: new quotas [E, K]. quotas, gpu0: [E, K]; closed: [E, K] the column where
    a replica is, _BIG + the column where none (as the numpy twin's)."""
    num_experts, width = quotas.shape
    cost = replica_cost(quotas, entry, tile)
    work = gpu_work(cost, gpu0, num_gpus)
    cell_work = work[gpu0] * width  # [E, K] each cell's GPU's work, room for a column tie-break
    column = torch.arange(width, device=quotas.device)[None, :]
    used = quotas > 0  # `closed` holds the column too: receiver keys stay distinct
    donor_key = (width - 1 - column) + torch.where(used, cell_work, -width)
    top, donor = torch.max(donor_key, dim=1, keepdim=True)  # keys are distinct within a row
    top = top // width  # [E, 1] the donor GPU's work
    receiver_key = 2 * cell_work + (entry * width) * ~used + closed
    receiver = torch.argmin(receiver_key, dim=1, keepdim=True)
    g_to = torch.gather(gpu0, 1, receiver)
    bottom = work[g_to]
    amount, peak = _choose_move(quotas, cost, donor, receiver, top, bottom, entry, tile)
    expert = torch.arange(num_experts, device=quotas.device)[:, None]
    key = torch.where(peak < top, top * num_experts + (num_experts - 1 - expert), -1)
    best = torch.full((num_gpus,), -1, dtype=torch.int64, device=quotas.device)
    best.scatter_reduce_(0, g_to[:, 0], key[:, 0], reduce="amax")
    amount = amount * ((key == best[g_to]) & (key >= 0))
    return quotas.scatter_add(1, torch.cat([donor, receiver], dim=1), torch.cat([-amount, amount], dim=1))


def device_quotas_torch(counts: torch.Tensor, table_gpu: torch.Tensor, num_gpus: int, entry_tokens: float,
                        tile_tokens: int, passes: int = DEFAULT_PASSES) -> torch.Tensor:
    """The split of one layer on counts' device: whole tokens per replica column [E, K] int64 (row
    sums == counts, 0 where table_gpu == -1). counts: [E] int64; table_gpu: [E, K] int64 (the
    `ReplicaTable.gpu` of `planning.device_split.replica_table`, on the same device)."""
    entry = int(round(entry_tokens * COST_SCALE))
    valid = table_gpu >= 0
    gpu0 = torch.clamp_min(table_gpu, 0)
    closed = (~valid) * _BIG + torch.arange(valid.shape[1], device=valid.device)[None, :]
    quotas = initial_split(counts, valid, entry, tile_tokens)
    for _ in range(passes):  # a fixed count: no data-dependent loop
        quotas = refine_pass(quotas, gpu0, closed, entry, tile_tokens, num_gpus)
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
