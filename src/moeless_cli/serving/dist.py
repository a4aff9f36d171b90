"""The dist backend: one process per worker under torchrun, tokens exchanged with all-to-all.

Every rank runs the same requests through attention and the gates (replicated), so every rank
knows the whole routing and the policy's split (the policy is deterministic and every rank sees
rank 0's clock). Token ownership is data-parallel: rank r owns a contiguous block of the batch's
tokens. Per MoE layer: each rank sends the rows of its own (token, slot) pairs to the ranks holding
the replicas that serve them (`all_to_all_single`, uneven splits), runs its replicas on what it
received, sends the outputs back (a second all-to-all), combines its own tokens in the model's
order, and an all-reduce of the zero-padded result gives every rank the full layer output (exact:
each row is non-zero on one rank only).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from moeless_cli.online.policies import Policy
from moeless_cli.serving.runtime import ExpertParallelRuntime, LayerTiming


class DistRuntime(ExpertParallelRuntime):
    def __init__(self, loaded: Any, workers: list[Any], policy: Policy, predictor: Any, distance: int,
                 rank: int, world: int):
        super().__init__(loaded, workers, policy, predictor, distance)
        self.rank = rank  # this process's worker index
        self.world = world  # number of workers (processes)
        self.iteration_now = 0.0  # rank 0's clock for the current step (same on every rank)

    def now(self) -> float:
        return self.iteration_now

    def is_local(self, worker: int) -> bool:
        return worker == self.rank

    def moe_forward(self, layer: int, hidden: Any, top_k_index: Any, top_k_weights: Any) -> Any:
        import torch
        import torch.distributed as dist

        self._prepare_ahead(layer, hidden)
        start = time.perf_counter()
        route = self._route(layer, top_k_index)
        num_tokens, k = route.top_k_index.shape
        order = route.order.cpu().numpy()  # [T*k]
        used = np.flatnonzero(route.counts)
        used = used[np.argsort(route.expert[used], kind="stable")]
        replica_of = np.repeat(used, route.counts[used])  # [T*k] replica serving each position of `order`
        token_of = order // k  # [T*k]
        owner = token_of // -(-num_tokens // self.world)  # [T*k] rank owning each pair's token
        dest = route.gpu[replica_of]  # [T*k] rank running each pair's replica

        mine = np.flatnonzero(owner == self.rank)  # ascending: by expert, then token
        send = mine[np.argsort(dest[mine], kind="stable")]
        send_sizes = np.bincount(dest[mine], minlength=self.world).tolist()
        to_me = np.flatnonzero(dest == self.rank)
        recv = to_me[np.argsort(owner[to_me], kind="stable")]  # same order each sender used
        recv_sizes = np.bincount(owner[to_me], minlength=self.world).tolist()

        x_recv = hidden.new_empty((recv.size, hidden.shape[1]))
        dist.all_to_all_single(x_recv, hidden[torch.from_numpy(token_of[send])].contiguous(), recv_sizes, send_sizes)
        dispatched = time.perf_counter()

        out_recv = torch.empty_like(x_recv)
        worker = self.workers[self.rank]
        experts_here = route.expert[replica_of[recv]]  # [received] expert of each received row
        jobs, rows_of = [], []
        for e in np.unique(experts_here):
            rows = torch.from_numpy(np.flatnonzero(experts_here == e))
            jobs.append((int(e), x_recv[rows]))
            rows_of.append(rows)
        outs, compute_s = worker.run(self.math[layer], layer, jobs)
        self.ledger.ran(len(jobs), route.copied)
        for rows, out in zip(rows_of, outs):
            out_recv[rows] = out
        back = hidden.new_empty((send.size, hidden.shape[1]))
        ran = time.perf_counter()
        dist.all_to_all_single(back, out_recv, send_sizes, recv_sizes)

        out_mine = back[torch.from_numpy(np.argsort(np.argsort(dest[mine], kind="stable")))]  # rows in `mine` order
        final = torch.zeros_like(hidden)
        experts_mine = route.expert[replica_of[mine]]
        bounds = np.flatnonzero(np.diff(experts_mine)) + 1
        for seg in np.split(np.arange(mine.size), bounds):  # ascending expert id: the model's order
            if seg.size == 0:
                continue
            pos = mine[seg]
            tokens = torch.from_numpy(token_of[pos])
            out = out_mine[torch.from_numpy(seg)] * top_k_weights[tokens, torch.from_numpy(order[pos] % k), None]
            final.index_add_(0, tokens, out.to(final.dtype))
        dist.all_reduce(final)
        end = time.perf_counter()
        worker_s = [0.0] * self.world
        worker_s[self.rank] = compute_s
        # Wall-clock pieces of this rank: the all-to-alls include waiting for the slowest rank.
        self.stats.layers.append(LayerTiming(layer, num_tokens, dispatched - start - route.cold_s,
                                             worker_s, end - ran + (ran - dispatched - compute_s), route.cold_s,
                                             route.decide_s))
        self.stats.busy_workers.append(int(np.unique(route.gpu[used]).size))
        self.policy.pool.bill(layer, len(used), self.stats.layers[-1].moe_s)  # the policy recorded their use
        return final
