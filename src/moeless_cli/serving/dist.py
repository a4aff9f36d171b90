"""The dist backend: one process per worker under torchrun, tokens exchanged with all-to-all.

Every rank runs the same requests through attention and the gates (replicated), so every rank
knows the whole routing and the policy's split (the policy is deterministic and every rank sees
rank 0's clock). Token ownership is data-parallel: rank r owns a contiguous block of the batch's
tokens. Per MoE layer: each rank sends the rows of its own (token, slot) pairs to the ranks holding
the replicas that serve them (`all_to_all_single`, uneven splits), runs its replicas on what it
received, sends the outputs back (a second all-to-all), combines its own tokens in the model's
order, and an all-reduce of the zero-padded result gives every rank the full layer output (exact:
each row is non-zero on one rank only).

The split of each layer's pairs over the replicas needs the global counts [E]. Every rank counts
only the pairs of the tokens it owns and ONE collective per layer exchanges them: an all_gather of
the [E] int64 counts (E integers sent per rank), not an all_reduce, so that every rank also knows
every other rank's counts: the global counts are their sum (the policy's load, the same on every
rank, so every rank computes the same quotas, on the device when the policy offers a replica table),
and because token blocks are contiguous and ascending, rank r's pairs of expert e take places
sum(counts[:r, e]) + (their local rank) in e's global order, which is what `pair_replica` assigns
to quotas. (The gates are replicated here, so the exchange plan reads the rank's view of every
pair's worker directly; a deployment without replicated gates would derive its receive sizes from
the gathered [world, E] counts and the quotas alone, with no further collective.)

Memory is partitioned: local rank 0 of each node writes every expert to the node's host store file
(`experts.safetensors`, shared by the node's ranks through the page cache), then every rank frees
the model's fused expert weights and holds only the replicas its policy places on it, plus the
dense weights (replicated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.online.policies import Policy
from moeless_cli.serving import routing
from moeless_cli.serving.experts import FileHostStore, release_fused, tensor_bytes, write_host_store
from moeless_cli.serving.runtime import ExpertParallelRuntime, LayerTiming, Route

STORE_WAIT_S = 1800.0  # how long a rank waits for its node's host store to be written


@dataclass
class RankPlace:
    """Where this process sits in the dist group."""

    rank: int  # global rank: the worker index the policy places replicas on
    world: int  # number of workers (processes) over all nodes
    store_path: Path  # the node's host weight store (experts.safetensors)
    writes_store: bool  # local rank 0 writes the store when it is not there yet (a restart reuses it)


class DistRuntime(ExpertParallelRuntime):
    def __init__(self, loaded: Any, workers: list[Any], policy: Policy, predictor: Any, distance: int,
                 place: RankPlace):
        super().__init__(loaded, workers, policy, predictor, distance)
        self.place = place
        self.rank = place.rank  # this process's worker index
        self.world = place.world  # number of workers (processes)
        self.iteration_now = 0.0  # rank 0's clock for the current step (same on every rank)
        self.planned_replicas = 0  # replicas the policy placed on this rank at install (its plan's share)

    def split_modes(self) -> tuple[str, ...]:
        """Balanced only: each rank measures its own layer times, so ranks choosing by them could disagree, and
        every rank must size the workers' runs from the same quotas."""
        return ("balanced",)

    def install(self) -> None:
        super().install()
        self.planned_replicas = sum(1 for table in self.policy.pool.layers.values() for _, gpu in table
                                    if gpu == self.rank)

    def _attach_store(self, modules: list[Any]) -> None:
        """Serve replicas from the node's host store file, and free the model's fused expert weights."""
        path = self.place.store_path
        if self.place.writes_store and not path.is_file():
            write_host_store(path, modules, [self.math[layer] for layer in range(len(modules))])
        deadline = time.monotonic() + STORE_WAIT_S
        while not path.is_file():
            if time.monotonic() > deadline:
                raise MoelessError(f"rank {self.rank}: the node's host weight store {path} was never written")
            time.sleep(0.05)
        self.store = FileHostStore(path, self.math)
        for layer, module in enumerate(modules):
            release_fused(module, self.math[layer])

    def resident_expert_bytes(self) -> int:
        """Expert weight bytes this process holds: its replicas and whatever fused weights remain."""
        tensors = [t for key, weights in self.workers[self.rank].replicas.items() for t in weights.values()]
        tensors += [getattr(module, name) for layer, (_, _, module) in self._originals.items()
                    for name in self.math[layer].names]
        return tensor_bytes(t for t in tensors if t.numel() > 0)

    def now(self) -> float:
        return self.iteration_now

    def is_local(self, worker: int) -> bool:
        return worker == self.rank

    def _layer_counts(self, top_k_index: Any) -> Any:
        """top_k_index: [T, k] the batch's experts (the gates are replicated). The global counts [E]
        from one all_gather of every rank's counts of its own tokens' pairs (see the module docstring)."""
        import torch
        import torch.distributed as dist

        block = -(-top_k_index.shape[0] // self.world)  # tokens per rank (the last block may be short)
        mine = routing.expert_counts(top_k_index[self.rank * block:(self.rank + 1) * block].reshape(-1),
                                     self.loaded.num_experts)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        self.rank_counts = torch.stack(every)  # [world, E]: rank r's pairs of e follow ranks < r's in e's order
        return self.rank_counts.sum(dim=0)

    def moe_forward(self, layer: int, hidden: Any, top_k_index: Any, top_k_weights: Any) -> Any:
        """hidden: [T, H] router input; top_k_index, top_k_weights: [T, k] from the model's gate."""
        import torch
        import torch.distributed as dist

        self._prepare_ahead(layer, hidden)
        start = time.perf_counter()
        route = self._route(layer, top_k_index)
        ex = _plan_exchange(route, self.rank, self.world)
        x_recv = hidden.new_empty((ex.recv.size, hidden.shape[1]))
        dist.all_to_all_single(x_recv, hidden[torch.from_numpy(ex.token_of[ex.send])].contiguous(), ex.recv_sizes,
                               ex.send_sizes)
        dispatched = time.perf_counter()
        out_recv, compute_s = self._run_received(layer, route, ex, x_recv)
        back = hidden.new_empty((ex.send.size, hidden.shape[1]))
        ran = time.perf_counter()
        dist.all_to_all_single(back, out_recv, ex.send_sizes, ex.recv_sizes)
        final = _combine_mine(self.math[layer], hidden, back, route, ex, top_k_weights)
        dist.all_reduce(final)
        end = time.perf_counter()
        worker_s = [0.0] * self.world
        worker_s[self.rank] = compute_s
        # Wall-clock pieces of this rank: the all-to-alls include waiting for the slowest rank.
        self.stats.layers.append(LayerTiming(layer, route.top_k_index.shape[0], dispatched - start - route.cold_s,
                                             worker_s, end - ran + (ran - dispatched - compute_s), route.cold_s,
                                             route.decide_s))
        self.stats.busy_workers.append(int(np.unique(route.gpu).size))
        self.policy.pool.bill(layer, len(route.gpu), self.stats.layers[-1].moe_s)  # the policy recorded their use
        return final

    def _run_received(self, layer: int, route: Route, ex: Exchange, x_recv: Any) -> tuple[Any, float]:
        """Run this rank's replicas on the rows it received (x_recv: [received, H]); returns their
        outputs in the same row order and the compute seconds."""
        import torch

        out_recv = torch.empty_like(x_recv)
        experts_here = ex.expert_at[ex.recv]  # [received] expert of each received row
        jobs, rows_of = [], []
        for e in np.unique(experts_here):
            rows = torch.from_numpy(np.flatnonzero(experts_here == e))
            jobs.append((int(e), x_recv[rows]))
            rows_of.append(rows)
        outs, compute_s = self.workers[self.rank].run(self.math[layer], layer, jobs)
        self.ledger.ran(len(jobs), route.copied)
        for rows, out in zip(rows_of, outs):
            out_recv[rows] = out
        return out_recv, compute_s


@dataclass
class Exchange:
    """Who sends which (token, slot) pair's row where, for one MoE layer call on one rank."""

    order: np.ndarray  # [T*k] pair positions grouped by expert, tokens ascending (the route's order)
    expert_at: np.ndarray  # [T*k] expert of each position of `order`
    token_of: np.ndarray  # [T*k] token of each position of `order`
    dest: np.ndarray  # [T*k] rank running each position's replica
    mine: np.ndarray  # [m] positions whose token this rank owns, ascending: by expert, then token
    send: np.ndarray  # [m] `mine` ordered by destination rank
    send_sizes: list[int]  # [world] rows sent to each rank
    recv: np.ndarray  # [n] positions this rank's replica serves, ordered by owner as each sender sent them
    recv_sizes: list[int]  # [world] rows received from each rank


def _plan_exchange(route: Route, rank: int, world: int) -> Exchange:
    """Token ownership is data-parallel: rank r owns a contiguous block of the tokens."""
    num_tokens, k = route.top_k_index.shape
    order = route.order.cpu().numpy()  # [T*k]
    token_of = order // k
    owner = token_of // -(-num_tokens // world)  # [T*k] rank owning each pair's token
    if route.pair_gpu is not None:  # the device split named each pair's worker (its rank in its expert)
        dest = route.pair_gpu().cpu().numpy()[order]
    else:  # the host split's runs: each used replica takes the next counts[u] pairs of its expert
        dest = np.repeat(route.gpu, route.counts)
    mine = np.flatnonzero(owner == rank)
    to_me = np.flatnonzero(dest == rank)
    return Exchange(order, np.repeat(route.expert, route.counts), token_of, dest, mine,
                    send=mine[np.argsort(dest[mine], kind="stable")],
                    send_sizes=np.bincount(dest[mine], minlength=world).tolist(),
                    recv=to_me[np.argsort(owner[to_me], kind="stable")],  # same order each sender used
                    recv_sizes=np.bincount(owner[to_me], minlength=world).tolist())


def _combine_mine(math: Any, hidden: Any, back: Any, route: Route, ex: Exchange, top_k_weights: Any) -> Any:
    """This rank's tokens' layer output, zero elsewhere: the returned rows (back: [m, H], in `send`
    order) weighted and summed as the model's experts implementation does (`ExpertMath.combine`).
    Every pair of an owned token is here, so the other tokens' rows are exact zeros."""
    import torch

    rows = back.new_zeros((ex.order.size, back.shape[1]))  # [T*k, H] in `order`, zero where not mine
    rows[torch.from_numpy(ex.mine)] = back[torch.from_numpy(np.argsort(np.argsort(ex.dest[ex.mine], kind="stable")))]
    return math.combine(rows, route.order, route.token_of, route.load, top_k_weights, hidden)
