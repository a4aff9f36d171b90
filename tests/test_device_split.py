"""The device dispatch split: numpy and torch twins agree to the token, keep every token, never read a
value back to the host, launch a fixed number of ops, and land near the exact whole-token optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from moeless_cli.planning.device_split import (
    DECISION_KERNELS,
    DEFAULT_PASSES,
    ReplicaTable,
    device_quotas,
    quotas_to_replicas,
    replica_table,
)
from moeless_cli.serving.device_split import device_quotas_torch, pair_replica

ENTRIES = (0.0, 1.0, 2.5, 3.0, 5.0, 143.07692307692307)  # token-times of one weight read
TILES = (1, 2, 4, 64)


@st.composite
def split_cases(draw, max_experts: int = 12, max_gpus: int = 6, max_tokens: int = 400):
    """(counts [E], table, entry, tile): 1..K replicas per expert on distinct GPUs, experts sharing
    GPUs, zero counts, G = 1 allowed; a random preference order."""
    gpus = draw(st.integers(1, max_gpus))
    experts = draw(st.integers(1, max_experts))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    expert, gpu = [], []
    for e in range(experts):
        hosts = rng.choice(gpus, int(rng.integers(1, min(gpus, 4) + 1)), replace=False)
        expert += [e] * hosts.size
        gpu += hosts.tolist()
    order = rng.permutation(len(expert))  # replicas in any flat order
    table = replica_table(np.array(expert)[order], np.array(gpu)[order], experts, gpus, rng.random(len(expert)))
    counts = rng.integers(0, draw(st.integers(1, max_tokens)), experts) * (rng.random(experts) > 0.2)
    return counts.astype(np.int64), table, draw(st.sampled_from(ENTRIES)), draw(st.sampled_from(TILES))


def _torch_quotas(counts: np.ndarray, table: ReplicaTable, entry: float, tile: int, passes: int = DEFAULT_PASSES):
    return device_quotas_torch(torch.from_numpy(counts), torch.from_numpy(table.gpu), table.num_gpus,
                               entry, tile, passes).numpy()


@settings(max_examples=150, deadline=None)
@given(split_cases(), st.sampled_from([0, 1, DEFAULT_PASSES, 7]))
def test_twins_agree_and_keep_every_token(case, passes):
    counts, table, entry, tile = case
    quotas = device_quotas(counts, table, entry, tile, passes)
    assert quotas.dtype == np.int64 and quotas.shape == table.gpu.shape
    np.testing.assert_array_equal(quotas, _torch_quotas(counts, table, entry, tile, passes))
    np.testing.assert_array_equal(quotas.sum(axis=1), counts)
    assert (quotas >= 0).all() and (quotas[table.gpu < 0] == 0).all()
    flat = quotas_to_replicas(quotas, table)
    np.testing.assert_array_equal(np.bincount(table.replica[table.replica >= 0], minlength=flat.size) > 0,
                                  np.ones(flat.size, dtype=bool))
    assert flat.sum() == counts.sum()


def _cost(tokens: np.ndarray, entry: float, tile: int) -> np.ndarray:
    """The simulator's physical cost in token-times: max(entry, tile * ceil(t / tile)), 0 at t = 0."""
    return np.where(tokens > 0, np.maximum(entry, tile * np.ceil(tokens / tile)), 0.0)


def _peak(quotas: np.ndarray, table: ReplicaTable, entry: float, tile: int) -> float:
    valid = table.gpu >= 0
    return float(np.bincount(table.gpu[valid], weights=_cost(quotas[valid], entry, tile),
                             minlength=table.num_gpus).max())


@settings(max_examples=60, deadline=None)
@given(split_cases(), st.integers(0, 6))
def test_passes_never_raise_the_busiest_gpu(case, passes):
    counts, table, entry, tile = case
    before = _peak(device_quotas(counts, table, entry, tile, passes), table, entry, tile)
    assert _peak(device_quotas(counts, table, entry, tile, passes + 1), table, entry, tile) <= before + 1e-6


def _pair_reference(flat_expert: list[int], quotas: np.ndarray) -> list[int]:
    """Each pair's column the slow way: walk the pairs, filling each expert's columns in order."""
    seen: dict[int, int] = {}
    out = []
    for e in flat_expert:
        rank = seen.get(e, 0)
        seen[e] = rank + 1
        out.append(int(np.searchsorted(np.cumsum(quotas[e]), rank, side="right")))
    return out


@settings(max_examples=100, deadline=None)
@given(split_cases(max_tokens=60), st.integers(0, 2**16))
def test_pair_replica_fills_columns_in_pair_order(case, seed):
    counts, table, entry, tile = case
    quotas = device_quotas(counts, table, entry, tile)
    flat = np.random.default_rng(seed).permutation(np.repeat(np.arange(counts.size), counts))
    column = pair_replica(torch.from_numpy(flat), torch.from_numpy(quotas)).numpy()
    assert column.tolist() == _pair_reference(flat.tolist(), quotas)
    assert (table.gpu[flat, column] >= 0).all()


def test_replica_table_orders_by_preference_then_index():
    table = replica_table(np.array([1, 0, 1, 1, 0]), np.array([3, 0, 1, 2, 2]), 3, 4,
                          preference=np.array([0.5, 1.0, 0.9, 0.5, 2.0]))
    np.testing.assert_array_equal(table.gpu, [[2, 0, -1], [1, 3, 2], [-1, -1, -1]])
    np.testing.assert_array_equal(table.replica, [[4, 1, -1], [2, 0, 3], [-1, -1, -1]])
    flat = replica_table(np.array([1, 0, 1]), np.array([3, 0, 1]), 2, 4)
    np.testing.assert_array_equal(flat.gpu, [[0, -1], [3, 1]])
    np.testing.assert_array_equal(quotas_to_replicas(np.array([[5, 0], [2, 7]]), flat), [2, 5, 7])


class _NoHostSync(TorchDispatchMode):
    """Fails on any value read back to the host or copy between devices; counts the other ops."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        assert func is not torch.ops.aten._local_scalar_dense.default, "a value read back to the host"
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            target = kwargs.get("device")
            devices = {t.device for t in tensors} | ({torch.device(target)} if target is not None else set())
            assert len(devices) == 1, f"copy across devices: {func}"
        if not func.is_view:
            self.ops += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("experts,gpus,width,tokens", [(8, 8, 2, 32), (64, 8, 3, 2048), (5, 1, 1, 7), (1, 3, 3, 0)])
def test_no_host_sync_and_a_fixed_op_count(experts, gpus, width, tokens):
    rng = np.random.default_rng(experts)
    gpu = np.stack([(np.arange(experts) + k) % gpus if k < gpus else np.full(experts, -1) for k in range(width)], 1)
    gpu[experts // 2:, width - 1:] = -1 if width > 1 else gpu[experts // 2:, width - 1:]
    flat = torch.from_numpy(rng.integers(0, experts, tokens))
    counts = torch.bincount(flat, minlength=experts)
    table_gpu = torch.from_numpy(gpu.astype(np.int64))
    with _NoHostSync() as mode:
        quotas = device_quotas_torch(counts, table_gpu, gpus, 143.07692307692307, 64)
        column = pair_replica(flat, quotas)
    assert mode.ops == DECISION_KERNELS
    assert (quotas.sum(dim=1) == counts).all() and column.shape == flat.shape


def test_the_guard_catches_a_host_read():
    with pytest.raises(AssertionError, match="host"), _NoHostSync():
        torch.arange(3).sum().item()


def _compositions(total: int, parts: int):
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def _optimum(counts: np.ndarray, table: ReplicaTable, entry: float, tile: int) -> float:
    """The exact whole-token optimum by brute force over every split (tiny cases only)."""
    width = table.gpu.shape[1]
    rows = []
    for e, n in enumerate(counts.tolist()):
        replicas = int((table.gpu[e] >= 0).sum())
        rows.append([split + (0,) * (width - replicas) for split in _compositions(n, replicas)])
    return min(_peak(np.array(split), table, entry, tile) for split in itertools.product(*rows))


def _tiny_case(rng: np.random.Generator, max_replicas: int):
    experts, gpus = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    expert, gpu = [], []
    for e in range(experts):
        hosts = rng.choice(gpus, int(rng.integers(1, min(gpus, max_replicas) + 1)), replace=False)
        expert += [e] * hosts.size
        gpu += hosts.tolist()
    table = replica_table(np.array(expert), np.array(gpu), experts, gpus, rng.random(len(expert)))
    return rng.integers(0, 9, experts), table, float(rng.choice(ENTRIES[:5])), int(rng.choice(TILES[:3]))


def test_near_the_exact_optimum_on_tiny_cases():
    """400 random tiny cases (1-3 experts with 1-3 replicas on 1-3 GPUs, 0-8 tokens each, entry
    0-5, tile 1-4), against the brute-force optimum under the same cost. Measured on this seed: 398
    optimal, mean 1.0006, worst 1.167. Other seeds: 97.5-99.5% optimal, mean 1.0004-1.0037, worst
    up to 2.0 (one row tile: 8 vs 4 token-times, where the optimum needs two experts to move at
    once, which single moves that must each lower their pair's busier GPU cannot see)."""
    rng = np.random.default_rng(2024)
    ratios = []
    for _ in range(400):
        counts, table, entry, tile = _tiny_case(rng, 3)
        optimum = _optimum(counts, table, entry, tile)
        got = _peak(device_quotas(counts, table, entry, tile), table, entry, tile)
        assert got >= optimum - 1e-9
        ratios.append(got / optimum if optimum > 0 else 1.0)
    ratios = np.array(ratios)
    assert np.mean(ratios == 1.0) >= 0.99
    assert ratios.mean() <= 1.002
    assert ratios.max() <= 1.25


def test_exact_with_one_replica_per_expert():
    rng = np.random.default_rng(7)
    for _ in range(100):
        counts, table, entry, tile = _tiny_case(rng, 1)
        assert _peak(device_quotas(counts, table, entry, tile), table, entry, tile) == _optimum(counts, table, entry, tile)
