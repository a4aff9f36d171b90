"""The physical time model: a roofline GEMM per used replica, row tiles, per-collective latency."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.sim.hardware import get_hardware
from moeless_cli.sim.presets import get_preset
from moeless_cli.sim.timemodel import ClusterModel


def _cluster(gpus: int = 8, preset: str = "mixtral-8x7b", hw: str = "a6000") -> ClusterModel:
    return ClusterModel(get_hardware(hw), get_preset(preset), gpus, "physical")


def test_a_small_batch_pays_a_whole_weight_read_per_replica():
    c = _cluster()
    one = c.replica_s(np.array([1.0]))[0]
    assert one == pytest.approx(c.weight_s)  # memory-bound: 352 MB at the A6000's HBM rate
    assert c.weight_s == pytest.approx(get_preset("mixtral-8x7b").expert_bytes / (get_hardware("a6000").hbm_gbps * 1e9))
    # The same 8 tokens on one replica or split over two on one GPU: the split pays a second read.
    single, _ = c.moe_layer(np.array([0]), np.array([8.0]))
    split, _ = c.moe_layer(np.array([0, 0]), np.array([4.0, 4.0]))
    assert split - single == pytest.approx(c.weight_s)


def test_large_batches_are_compute_bound_in_whole_tiles():
    c = _cluster()
    tile = c.hardware.gemm_tile_tokens
    big = 64.0 * tile
    assert c.replica_s(np.array([big]))[0] == pytest.approx(c.token_s * big)
    assert c.replica_s(np.array([big + 1]))[0] == pytest.approx(c.token_s * (big + tile))
    assert c.replica_s(np.array([0.0]))[0] == 0.0  # a replica without tokens is not invoked


def test_collectives_cost_their_fixed_latency_by_link_class():
    hw = get_hardware("h100")
    one_gpu = ClusterModel(hw, get_preset("olmoe-1b-7b"), 1, "physical")
    node = ClusterModel(hw, get_preset("olmoe-1b-7b"), 8, "physical")
    two_nodes = ClusterModel(hw, get_preset("olmoe-1b-7b"), 16, "physical")
    assert one_gpu.collective_s() == 0.0
    assert node.collective_s() == hw.intra_collective_s
    assert two_nodes.collective_s() == hw.inter_collective_s
    assert ClusterModel(hw, get_preset("olmoe-1b-7b"), 8, "roofline").collective_s() == 0.0
    # Dispatch and combine: the layer pays the latency twice on top of its GEMMs.
    gpu, tokens = np.arange(8), np.full(8, 1.0)
    layer, _ = node.moe_layer(gpu, tokens)
    assert layer >= node.weight_s + 2 * hw.intra_collective_s


@pytest.mark.parametrize("seed", range(20))
def test_oracle_is_a_floor_for_every_lossless_split(seed):
    rng = np.random.default_rng(seed)
    c = _cluster(gpus=4, preset="olmoe-1b-7b", hw="h100")
    experts = 16
    load = rng.integers(0, 300, size=experts).astype(np.float64)  # [experts]
    # Any lossless placement: each expert's tokens split over 1-3 replicas on random GPUs.
    expert, gpu, tokens = [], [], []
    for e in range(experts):
        parts = rng.integers(1, 4)
        cuts = np.sort(rng.integers(0, int(load[e]) + 1, size=parts - 1))
        shares = np.diff(np.concatenate([[0], cuts, [load[e]]]))
        expert += [e] * parts
        gpu += rng.integers(0, 4, size=parts).tolist()
        tokens += shares.tolist()
    lossless, _ = c.moe_layer(np.array(gpu), np.array(tokens, dtype=np.float64))
    oracle, _ = c.moe_layer(np.arange(experts) % 4, load, perfect_balance=True)
    assert oracle <= lossless + 1e-12
