"""The clairvoyant lossless floor of one MoE layer on the simulated cluster (the bench's `bound` system).

Knowing each batch's true loads, no lossless system (any placement within the memory, any whole-token
split, free and instant decisions, no cold start) can take less than this under the cluster's time
model: the least busiest-GPU expert time (`planning.bounds.busiest_gpu_floor`, proven there), plus
dispatch and combine, each at least the exchange's least time over every split of the tokens over
the GPUs (`planning.bounds.exchange_floor_per_token`; exactly the balanced split on a cluster whose
GPUs all have the same links), plus the per-layer fixed costs every system pays. The three parts
are minimised separately, so their sum is a lower bound on the best sum. The paper time model
charges the slowest replica alone, not a GPU's replicas together; no floor is given for it (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.planning.bounds import ReplicaCost, busiest_gpu_floor, exchange_floor_per_token
from moeless_cli.sim.timemodel import ClusterModel


@dataclass(frozen=True)
class FloorParts:
    """The floor of each batch's layer time, by part (seconds, [batches] each)."""

    compute_s: np.ndarray  # the busiest GPU's expert GEMMs
    exchange_s: np.ndarray  # one all-to-all (dispatch; combine costs the same)
    fixed_s: np.ndarray  # per-layer fixed costs: the layer's own, and two collectives' latency

    @property
    def total_s(self) -> np.ndarray:
        return self.fixed_s + self.compute_s + 2 * self.exchange_s


@dataclass(frozen=True)
class LosslessFloor:
    """The floor on one cluster with `slots` replicas per GPU and `max_replicas` per layer."""

    cluster: ClusterModel
    slots: int  # replicas one GPU may hold per layer
    max_replicas: int  # replicas one layer may hold (the largest budget any compared system has)

    def parts(self, load: np.ndarray) -> FloorParts:
        """load: [batches, experts] true loads of one layer each. The floor's parts: FloorParts of [batches]."""
        load = np.rint(np.atleast_2d(load))
        total = load.sum(axis=1)  # [batches]
        cost = ReplicaCost.tabulate(self.cluster.replica_s(np.arange(int(total.max(initial=0)) + 2, dtype=np.float64)))
        compute = busiest_gpu_floor(load, cost, self.cluster.num_gpus, self.slots, self.max_replicas)
        used = total > 0
        hw = self.cluster.hardware
        fixed = np.where(used, hw.layer_fixed_s, 0.0) + 2 * self.cluster.collective_s()
        return FloorParts(compute, total * self.exchange_per_token(), fixed)

    def exchange_per_token(self) -> float:
        """Least seconds of one all-to-all per token-assignment in the layer, over every split of them over GPUs."""
        cluster, hw = self.cluster, self.cluster.hardware
        if hw.host_copy_gbps > 0:  # one host copies every row, one after another: no split changes it
            return cluster.token_bytes / (hw.host_copy_gbps * 1e9)
        one_gpu = np.eye(cluster.num_gpus)
        return exchange_floor_per_token(np.array([cluster.comm_s(row)[g] for g, row in enumerate(one_gpu)]))

    def layer_s(self, load: np.ndarray) -> np.ndarray:
        """load: [batches, experts]. The floor of each batch's MoE-layer seconds: [batches]."""
        return self.parts(load).total_s


def lossless_floor(cluster: ClusterModel, slots: int, max_replicas: int) -> LosslessFloor | None:
    """The floor for this cluster's time model; None for the paper model (it does not sum a GPU's work)."""
    if cluster.time_model == "paper":
        return None
    return LosslessFloor(cluster, slots, max_replicas)
