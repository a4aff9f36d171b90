"""Time of one MoE layer on the simulated cluster, and how many replicas fit in memory.

A replica serving t tokens computes for c * t seconds (c = expert FLOPs per token / achievable
FLOP/s). All-to-all: each GPU holds 1/G of the batch (attention is data-parallel), so a GPU serving
n token-assignments receives n/G from every peer over that pair's link class (fast link, PCIe or
network) and sends its share out likewise; link classes run in parallel, each bounded by its
per-GPU bandwidth. Dispatch and combine: twice.

Time models (`--time-model`):
- physical (the default): each replica that serves t > 0 tokens runs one grouped GEMM on its GPU, a roofline:
  max(w, c * tiles(t)), w = expert bytes / HBM bandwidth (its weights are streamed once), c * tiles(t)
  its compute with t rounded up to whole row tiles (`Hardware.gemm_tile_tokens`: a GEMM of 3 tokens
  costs a tile's compute, the small-batch efficiency loss). A GPU runs its replicas one after
  another; the layer waits for the busiest GPU, plus dispatch and combine all-to-all, each a fixed
  per-collective cost by link class (`intra_collective_s` / `inter_collective_s`) plus bytes over
  bandwidth. Oracle: the busiest GPU does at least the average of the one-replica-per-expert work,
  and at least one replica's GEMM over ceil(T / G) tokens.
- compute: an idealisation, no weight streaming (a replica's weights cost nothing to read, however
  few tokens it serves): a GPU is charged for all tokens of all the replicas it hosts (they share
  it); the layer waits for the busiest GPU: c max_g (tokens on g) + 2 max_g comm_g. Oracle spreads
  the tokens perfectly (c ceil(T / G), tokens being whole): no placement does better, so it is the
  floor. The model of the first bench versions ("default" then); for comparison with them.
- roofline: as compute, plus w = expert bytes / HBM bandwidth for every replica that serves any
  token (its weights are streamed once): small decode batches are memory-bound, and replicas that
  split an expert add weight reads. Oracle: max(sum_e (w + c t_e) / G, w + c T / G), still a floor
  (the busiest GPU does at least the average work, and at least one weight read plus 1/G of T).
- host workers (`Hardware.host_copy_gbps` > 0, the CPU calibration of `sim/calibration.py`): the
  exchange is every row copied through one host memory, one copy after another, plus a fixed
  per-layer cost (`layer_fixed_s`).
- paper: each replica's time as if it ran alone, the slowest one sets the layer time
  (c max_r t_r + 2 max_g comm_g), as in the MoEless paper; for comparison only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.sim.hardware import Hardware
from moeless_cli.sim.presets import ModelPreset

ACTIVATION_BYTES = 2  # bf16 hidden states in the all-to-all
KV_RESERVE = 0.2  # share of device memory kept for the KV cache and activations
TIME_MODELS = ("physical", "compute", "roofline", "paper")  # the first is the default
TIME_MODEL_NOTES = {  # one line each, for reports
    "physical": "roofline GEMM per used replica (weights streamed from HBM, whole row tiles), busiest GPU, "
                "all-to-all with per-collective latency",
    "compute": "an idealisation: compute only, no weight streaming (small batches cost almost nothing)",
    "roofline": "compute plus one weight read per used replica",
    "paper": "the paper's: the slowest replica alone sets the layer time (comparison only)",
}


def link_classes(num_gpus: int, hardware: Hardware) -> list[tuple[np.ndarray, float]]:
    """[(mask [G, G] of GPU pairs of one link class, per-GPU GB/s of that class)], diagonal excluded."""
    g = np.arange(num_gpus)
    node = g // hardware.gpus_per_node
    group = g // hardware.fast_link_group
    other = g[:, None] != g[None, :]
    same_node = node[:, None] == node[None, :]
    fast = other & same_node & (group[:, None] == group[None, :]) & (hardware.fast_link_group > 1)
    pcie = other & same_node & ~fast
    network = other & ~same_node
    classes = [(fast, hardware.fast_link_gbps), (pcie, hardware.pcie_gbps), (network, hardware.network_gbps)]
    return [(mask.astype(np.float64), gbps) for mask, gbps in classes if mask.any()]


@dataclass
class ClusterModel:
    hardware: Hardware  # the GPU and its links
    preset: ModelPreset  # the model's sizes
    num_gpus: int  # G: expert-parallel GPUs
    time_model: str = "physical"  # one of TIME_MODELS
    classes: list[tuple[np.ndarray, float]] = field(default_factory=list)  # link classes (set from the hardware)

    def __post_init__(self) -> None:
        require_choice("--time-model", self.time_model, TIME_MODELS)
        if self.num_gpus < 1:
            raise MoelessError(f"--gpus must be at least 1, got {self.num_gpus}")
        hw, p = self.hardware, self.preset
        self.weight_s = p.expert_bytes / (hw.hbm_gbps * 1e9)  # w: stream one replica's weights
        self.token_s = p.expert_flops_per_token / (hw.tflops * 1e12)  # c: one token through one expert
        self.token_bytes = p.hidden * ACTIVATION_BYTES
        self.classes = link_classes(self.num_gpus, hw)

    @property
    def replica_weight_s(self) -> float:
        """Seconds charged per used replica for streaming its weights (roofline and physical models)."""
        return self.weight_s if self.time_model in ("roofline", "physical") else 0.0

    def replica_s(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: [replicas] tokens each replica serves. Seconds of each replica's expert GEMM: [replicas]
        (0 for a replica without tokens: it is not invoked)."""
        used = tokens > 0
        if self.time_model == "physical":
            tile = self.hardware.gemm_tile_tokens
            compute = self.token_s * np.ceil(tokens / tile) * tile
            return np.where(used, np.maximum(self.weight_s, compute), 0.0)
        return np.where(used, self.replica_weight_s + self.token_s * tokens, 0.0)

    def collective_s(self) -> float:
        """Fixed seconds of one all-to-all (physical model): the slowest link class's latency."""
        if self.time_model != "physical" or self.num_gpus == 1:
            return 0.0
        hw = self.hardware
        return hw.inter_collective_s if self.num_gpus > hw.gpus_per_node else hw.intra_collective_s

    @property
    def entry_tokens(self) -> float:
        """The weight read of a replica in tokens of compute: the dispatch's entry cost (0 under
        compute and paper, which charge no weight reads; one replica's read under roofline and physical)."""
        return self.replica_weight_s / self.token_s

    def slots_per_gpu(self) -> int:
        """Replicas of one layer a GPU can hold: memory left after the dense weights and a KV reserve."""
        hw, p = self.hardware, self.preset
        dense = (p.attention_params * p.total_layers + p.shared_expert_params * p.moe_layers
                 + p.dense_ffn_params * p.dense_layers + p.other_params) * p.bytes_per_param
        free = hw.memory_gb * 1e9 * (1 - KV_RESERVE) - dense
        slots = int(free // (p.expert_bytes * p.moe_layers)) if free > 0 else 0
        need = math.ceil(p.num_experts / self.num_gpus)
        if slots < need:
            raise MoelessError(
                f"{p.name} does not fit on {self.num_gpus} x {hw.name}: {need} experts per GPU per layer needed, "
                f"memory holds {slots}; use more --gpus"
            )
        return min(slots, p.num_experts)

    def comm_s(self, gpu_tokens: np.ndarray) -> np.ndarray:
        """gpu_tokens: [G] token-assignments each GPU serves. Seconds of one all-to-all per GPU: [G]."""
        G = self.num_gpus
        out = np.zeros(G)
        if G == 1:
            return out
        per_peer = gpu_tokens * self.token_bytes / G  # bytes each peer sends to g
        for mask, gbps in self.classes:
            recv = per_peer * mask.sum(axis=0) / (gbps * 1e9)
            send = (mask @ per_peer) / (gbps * 1e9)
            out = np.maximum(out, np.maximum(recv, send))
        return out

    def moe_layer(self, gpu: np.ndarray, tokens: np.ndarray, perfect_balance: bool = False) -> tuple[float, float]:
        """gpu, tokens: [replicas]. Returns (layer seconds, GPU-seconds of work over all GPUs)."""
        G = self.num_gpus
        replica_s = self.replica_s(tokens)  # [replicas]
        if perfect_balance:
            # The busiest GPU of any lossless placement does at least the average work, and at
            # least one replica's GEMM over 1/G of the tokens: the larger of the two is the floor.
            # Tokens are whole: some GPU serves at least ceil(T / G) of them.
            total = float(tokens.sum())
            busiest = math.ceil(total / G - 1e-9)
            floor = max(replica_s.sum() / G, float(self.replica_s(np.array([float(busiest)]))[0]))
            work = np.full(G, floor)
            gpu_tokens = np.full(G, total / G)
        else:
            work = np.bincount(gpu, weights=replica_s, minlength=G)
            gpu_tokens = np.bincount(gpu, weights=tokens, minlength=G)
        if self.hardware.host_copy_gbps > 0:  # one host: every row is copied once each way, one after another
            comm = np.full(G, float(tokens.sum()) * self.token_bytes / (self.hardware.host_copy_gbps * 1e9) / G)
            exchange = float(comm.sum())
        else:
            comm = self.comm_s(gpu_tokens)
            exchange = float(comm.max())
        compute = float(replica_s.max(initial=0.0)) if self.time_model == "paper" and not perfect_balance else float(work.max())
        fixed = self.hardware.layer_fixed_s if tokens.sum() > 0 else 0.0
        exchange += self.collective_s()
        return fixed + compute + 2 * exchange, float((work + 2 * comm).sum()) + (fixed + 2 * self.collective_s()) * G

    def misc_s(self, batch_tokens: int, context_tokens: int) -> float:
        """Non-MoE seconds of one iteration (attention, shared experts, dense layers, LM head), data-parallel.

        batch_tokens: tokens in the iteration; context_tokens: KV-cache tokens read by its decodes.
        """
        hw, p = self.hardware, self.preset
        flops, hbm = hw.tflops * 1e12, hw.hbm_gbps * 1e9
        per_gpu = batch_tokens / self.num_gpus

        def dense(params: float) -> float:
            return params * p.bytes_per_param / hbm + 2 * params * per_gpu / flops

        kv = context_tokens * p.kv_bytes_per_token / self.num_gpus / hbm
        layer = dense(p.attention_params) + kv
        moe_layers = p.moe_layers * (layer + (dense(p.shared_expert_params) if p.shared_expert_params else 0.0))
        dense_layers = p.dense_layers * (layer + dense(p.dense_ffn_params))
        return moe_layers + dense_layers + dense(p.other_params / 2)
