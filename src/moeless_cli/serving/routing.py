"""One MoE layer call's split of (token, slot) pairs over replicas, in the runtime's terms.

Two ways to decide it, one result (`Split`):
- on the device (`device_split`), when the policy offers a per-layer replica table
  (`policy.device_table(layer)`): counts [E] = a scatter-add of the gate's experts on the gate's device
  → whole-token quotas per replica column (`serving.device_split.device_quotas_torch`), a fixed
  sequence of torch ops with no host synchronization inside. Only then are the quotas copied to the
  host, because the workers need run sizes to run (outside the decision, not in `decide_s`). When
  the gate runs on the CPU the host is that device, and the numpy twin
  (`planning.device_split.device_quotas`, the same integers) decides: a few hundred small torch
  ops cost several times more dispatcher overhead than the numpy ones;
- on the host (`host_split`): the policy's `dispatch` on the counts (numpy), rounded to whole tokens.

Either way the pairs, grouped by expert with tokens ascending (the runtime's `order`), fall in
contiguous runs per replica: an expert's first quota[e, 0] pairs go to its column-0 replica, the
next quota[e, 1] to column 1, and so on (which is what `pair_replica` computes per pair from its
rank among its expert's pairs). So a `Split` lists the used replicas by expert, then column, with
their run lengths, and the workers' jobs are slices of one gathered tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from moeless_cli.planning.dispatch import round_split


@dataclass
class Split:
    """The used replicas of one layer call, by expert then column (runs follow the pair order)."""

    load: np.ndarray  # [E] int64 pairs per expert (the global counts under the dist backend)
    expert: np.ndarray  # [u] expert of each used replica
    gpu: np.ndarray  # [u] worker of each used replica
    counts: np.ndarray  # [u] pairs each serves (> 0; sums to load per expert)
    decide_s: float  # the decision: counts -> split (device path: counts, collective, quotas)
    pair_gpu: Callable[[], Any] | None = None  # device path: () -> [T*k] worker of each pair (flat order)
    mode: str | None = None  # device path: "primary" or "balanced"; None: the host's dispatch


@dataclass
class DeviceTable:
    """A policy's `ReplicaTable` for one layer, on the gate's device (kept while the table is unchanged)."""

    source: Any  # the ReplicaTable it was made from (planning.device_split)
    gpu: Any  # [E, K] int64 torch: worker of each expert's k-th replica, -1 = none
    gpu_host: np.ndarray  # [E, K] the same on the host (to name the used replicas' workers)
    num_gpus: int  # G

    def matches(self, table: Any) -> bool:
        return table is self.source or (table.num_gpus == self.num_gpus and np.array_equal(table.gpu, self.gpu_host))


def device_table(table: Any, device: Any, cached: DeviceTable | None) -> DeviceTable:
    """`cached` when it holds the same table, else the table copied to `device`."""
    import torch

    if cached is not None and cached.matches(table):
        return cached
    gpu = np.ascontiguousarray(table.gpu, dtype=np.int64)
    return DeviceTable(table, torch.as_tensor(gpu, device=device), gpu, int(table.num_gpus))


def expert_counts(flat: Any, num_experts: int) -> Any:
    """flat: [P] expert of each (token, slot) pair (torch). Pairs per expert [E] int64, on flat's device,
    by a scatter-add: torch.bincount reads its output length back to the host on CUDA."""
    import torch

    if flat.device.type == "cpu":  # the host is the device: numpy counts the same memory with fewer calls
        return torch.from_numpy(np.bincount(flat.numpy(), minlength=num_experts).astype(np.int64))
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(0, flat.to(torch.int64), torch.ones_like(flat, dtype=torch.int64))


def group_pairs(flat: Any, k: int) -> tuple[Any, Any]:
    """flat: [T*k] expert of each (token, slot) pair (torch). (order [T*k]: pair positions grouped by
    expert, tokens ascending; token_of [T*k]: token of each), on flat's device. On the CPU numpy sorts
    the same memory (no copy, and fewer dispatcher calls than torch's); elsewhere torch sorts on the
    device, with no round trip to the host."""
    import torch

    if flat.device.type == "cpu":
        order = np.argsort(flat.numpy(), kind="stable")
        return torch.from_numpy(order), torch.from_numpy(order // k)
    order = torch.sort(flat, stable=True).indices
    return order, torch.div(order, k, rounding_mode="floor")


def whole_tokens(tokens: np.ndarray, expert: np.ndarray, load: np.ndarray) -> np.ndarray:
    """tokens: [r] a policy's split (whole already when the load is); [r] int64 whole tokens."""
    tokens = np.asarray(tokens, dtype=np.float64)
    if np.array_equal(tokens, np.rint(tokens)):
        return tokens.astype(np.int64)
    return round_split(tokens, expert, load)


def used_replicas(expert: np.ndarray, gpu: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """expert, gpu, counts: [r] a policy's replicas and whole tokens. Indices of those with tokens,
    by expert (stable: the policy's order within an expert is the column order)."""
    busy = np.flatnonzero(counts)
    return busy[np.argsort(expert[busy], kind="stable")]


def host_split(policy: Any, layer: int, load: np.ndarray, now: float) -> Split:
    """The policy's host `dispatch` on load: [E] (it also invokes the replicas it uses)."""
    import time

    start = time.perf_counter()
    plan = policy.dispatch(layer, load, now)
    expert, gpu = np.asarray(plan.expert, dtype=np.int64), np.asarray(plan.gpu, dtype=np.int64)
    counts = whole_tokens(plan.tokens, expert, load)
    decide_s = time.perf_counter() - start
    used = used_replicas(expert, gpu, counts)
    return Split(load, expert[used], gpu[used], counts[used], decide_s)


def quota_cells(quotas: np.ndarray, table_gpu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quotas, table_gpu: [E, K]. The used replica cells in row-major order (by expert, then column):
    (expert [u], worker [u], pairs [u])."""
    rows, cols = np.nonzero(quotas)
    return rows.astype(np.int64), table_gpu[rows, cols], quotas[rows, cols].astype(np.int64)


def device_split(counts: Any, flat: Any, table: DeviceTable, entry_tokens: float, tile_tokens: int,
                 started: float, mode: str = "balanced") -> Split:
    """counts: [E] int64 on the gate's device (global under dist); flat: [T*k] expert of each pair.
    The quotas are decided on the device, in `mode` (online/device_dispatch.py): "balanced" (the
    cost-aware quotas) or "primary" (every pair on its expert's column-0 replica). `started` is when
    the decision began (perf_counter), and it ends when the quotas are computed (a CUDA device is
    synchronized only to time it)."""
    import time

    import torch

    from moeless_cli.planning.device_split import device_quotas
    from moeless_cli.serving.device_split import device_quotas_torch, pair_replica

    if counts.device.type == "cpu":  # the host is the device: numpy decides, the same integers with cheaper ops
        load = counts.numpy()
        if mode == "primary":  # the used cells are column 0 of the experts with pairs: no [E, K] quotas needed
            expert = np.flatnonzero(load)
            decide_s = time.perf_counter() - started
            return Split(load, expert, table.gpu_host[expert, 0], load[expert].astype(np.int64), decide_s,
                         lambda: table.gpu[flat, 0], mode)
        quotas_host = device_quotas(load, table.source, entry_tokens, tile_tokens)
        quotas = torch.from_numpy(quotas_host)
        decide_s = time.perf_counter() - started
    else:
        if mode == "primary":
            quotas = torch.zeros_like(table.gpu)  # [E, K]
            quotas[:, 0] = counts
        else:
            quotas = device_quotas_torch(counts, table.gpu, table.num_gpus, entry_tokens, tile_tokens)
        if quotas.device.type == "cuda":
            torch.cuda.synchronize(quotas.device)
        decide_s = time.perf_counter() - started
        load, quotas_host = counts.cpu().numpy(), quotas.cpu().numpy()  # run sizes for the workers
    expert, gpu, pairs = quota_cells(quotas_host, table.gpu_host)

    def pair_gpu() -> Any:
        return table.gpu[flat, pair_replica(flat, quotas)]

    return Split(load, expert, gpu, pairs, decide_s, pair_gpu, mode)
