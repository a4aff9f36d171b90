"""The lossless floor (bench's `bound`): never above any lossless placement and whole-token split, per time model."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeless_cli.planning.bounds import ReplicaCost, busiest_gpu_floor, exchange_floor_per_token
from moeless_cli.planning.dispatch import balanced_split, round_split
from moeless_cli.planning.lossless_milp import exact_busiest_gpu
from moeless_cli.sim.bound import lossless_floor
from moeless_cli.sim.hardware import get_hardware
from moeless_cli.sim.presets import get_preset
from moeless_cli.sim.timemodel import TIME_MODELS, ClusterModel

SUMMED = [m for m in TIME_MODELS if m != "paper"]  # the models that charge a GPU for all its replicas


def _cluster(time_model: str, preset: str = "mixtral-8x7b", hw: str = "a6000", gpus: int = 8, **changes) -> ClusterModel:
    return ClusterModel(dataclasses.replace(get_hardware(hw), **changes), get_preset(preset), gpus, time_model)


# Small clusters where every regime shows within a few tokens: 2-token tiles, a weight read of 3 tokens'
# compute, GPU pairs on a fast link (3 GPUs: one without a fast peer), and a host-copy exchange.
TINY = {
    "tiles": dict(gemm_tile_tokens=2, hbm_gbps=31000.0),
    "asymmetric": dict(gemm_tile_tokens=2, hbm_gbps=31000.0),
    "host": dict(hbm_gbps=31000.0, host_copy_gbps=5.0, layer_fixed_s=1e-4),
}


def _compositions(total: int, parts: int):
    """Every way to write `total` as `parts` ordered nonnegative integers."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *cuts, total + parts - 1)
        yield [edges[i + 1] - edges[i] - 1 for i in range(parts)]


def _brute_force(cluster: ClusterModel, load: np.ndarray, slots: int, max_replicas: int) -> tuple[float, float]:
    """(least layer seconds, least busiest-GPU expert seconds) over every placement and whole-token split
    (one replica per expert and GPU: more never help, the cost being subadditive)."""
    G, best, best_compute = cluster.num_gpus, np.inf, np.inf
    for combo in itertools.product(*[list(_compositions(int(t), G)) for t in load]):
        y = np.array(combo).reshape(load.size, G)
        used = y > 0
        if used.sum(axis=0).max() > slots or used.sum() > max_replicas:
            continue
        expert, gpu = np.nonzero(used)
        tokens = y[expert, gpu].astype(np.float64)
        best = min(best, cluster.moe_layer(gpu, tokens)[0])
        best_compute = min(best_compute, np.bincount(gpu, weights=cluster.replica_s(tokens), minlength=G).max())
    return best, best_compute


def _cost(cluster: ClusterModel, tokens: int) -> ReplicaCost:
    return ReplicaCost.tabulate(cluster.replica_s(np.arange(tokens + 2, dtype=np.float64)))


@pytest.mark.parametrize("time_model", SUMMED)
@pytest.mark.parametrize("variant", sorted(TINY))
def test_floor_is_below_the_best_of_every_placement_and_split(time_model, variant):
    gpus = 3 if variant == "asymmetric" else 2
    cluster = _cluster(time_model, gpus=gpus, **TINY[variant])
    rng = np.random.default_rng(hash((time_model, variant)) % 2**32)
    for slots, max_replicas in ((2, 4), (3, 6)):
        load = rng.integers(0, 5 if gpus == 3 else 7, size=3).astype(np.float64)  # [experts]
        floor = lossless_floor(cluster, slots, max_replicas).parts(load[None])
        best, best_compute = _brute_force(cluster, load, slots, max_replicas)
        assert floor.total_s[0] <= best * (1 + 1e-9)
        assert floor.compute_s[0] <= best_compute * (1 + 1e-9)


@pytest.mark.parametrize("time_model", SUMMED)
def test_exact_program_finds_the_brute_force_optimum(time_model):
    cluster = _cluster(time_model, gpus=2, **TINY["tiles"])
    for load in (np.array([5.0, 4.0, 3.0]), np.array([6.0, 0.0, 2.0])):
        _, best_compute = _brute_force(cluster, load, 2, 4)
        floor = lossless_floor(cluster, 2, 4).parts(load[None]).compute_s[0]
        exact = exact_busiest_gpu(load, _cost(cluster, int(load.sum())), 2, 2, 4, floor=floor, time_limit_s=20)
        assert exact.proven and exact.seconds == pytest.approx(best_compute, rel=1e-3)
        assert floor <= exact.seconds * (1 + 1e-9)


@pytest.mark.parametrize("time_model", SUMMED)
@pytest.mark.parametrize("preset, hw, gpus", [("mixtral-8x7b", "a6000", 8), ("mixtral-8x7b", "a6000", 4),
                                              ("olmoe-1b-7b", "h100", 8), ("olmoe-1b-7b", "h100", 16)])
def test_uniform_load_floor_equals_static_ep(time_model, preset, hw, gpus):
    cluster = _cluster(time_model, preset, hw, gpus)
    experts = cluster.preset.num_experts
    floor = lossless_floor(cluster, cluster.slots_per_gpu(), experts * 4)
    for tokens in (1.0, 50.0, 300.0, 4096.0):
        uniform = np.full(experts, tokens)
        static, _ = cluster.moe_layer(np.arange(experts) % gpus, uniform)
        assert floor.layer_s(uniform[None])[0] == pytest.approx(static, rel=1e-9)


def test_exchange_floor_is_the_balanced_split_on_alike_gpus_and_below_it_otherwise():
    for gpus, alike in ((8, True), (3, False)):
        cluster = _cluster("physical", gpus=gpus)
        per_token = lossless_floor(cluster, 3, 24).exchange_per_token()
        balanced = cluster.comm_s(np.full(gpus, 120.0 / gpus)).max() / 120.0
        assert per_token == pytest.approx(balanced) if alike else 0 < per_token < balanced
    assert exchange_floor_per_token(np.array([1.0, 1.0, 2.0])) == pytest.approx(0.4)  # harmonic: 1 / (1 + 1 + 1/2)
    assert exchange_floor_per_token(np.zeros(1)) == 0.0  # one GPU exchanges nothing


def test_paper_model_has_no_floor_and_empty_batches_cost_only_the_collectives():
    assert lossless_floor(_cluster("paper"), 3, 24) is None
    cluster = _cluster("physical")
    empty = lossless_floor(cluster, 3, 24).layer_s(np.zeros((1, 8)))[0]
    assert empty == pytest.approx(cluster.moe_layer(np.arange(8), np.zeros(8))[0])


def test_tabulate_rejects_costs_the_proof_does_not_cover():
    y = np.arange(50, dtype=np.float64)
    with pytest.raises(ValueError, match="subadditive"):
        ReplicaCost.tabulate(y ** 2)  # superlinear: splitting would pay
    with pytest.raises(ValueError, match="decrease"):
        ReplicaCost.tabulate(np.r_[0.0, 5.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="f\\(0\\) = 0"):
        ReplicaCost.tabulate(y + 1)
    cost = ReplicaCost.tabulate(np.minimum(y, 1.0))
    with pytest.raises(ValueError, match="tabulated"):
        busiest_gpu_floor(np.array([[60.0]]), cost, 2, 1, 2)


@pytest.mark.parametrize("time_model", SUMMED)
@pytest.mark.parametrize("preset, hw", [("mixtral-8x7b", "a6000"), ("olmoe-1b-7b", "h100")])
def test_every_time_models_replica_cost_is_monotone_and_subadditive(time_model, preset, hw):
    f = _cluster(time_model, preset, hw).replica_s(np.arange(801, dtype=np.float64))
    a = np.arange(1, 401)
    assert (np.diff(f) >= 0).all()
    assert (f[a[:, None] + a[None, :]] <= f[a][:, None] + f[a][None, :] + 1e-15).all()  # every pair, not a sample
    ReplicaCost.tabulate(f)


@st.composite
def lossless_cases(draw):
    """A cluster, a whole load and one lossless solution of it within the memory: (cluster, load, slots,
    replicas, expert, gpu, tokens)."""
    time_model = draw(st.sampled_from(SUMMED))
    preset, hw = draw(st.sampled_from([("mixtral-8x7b", "a6000"), ("olmoe-1b-7b", "h100")]))
    gpus = draw(st.sampled_from([2, 4, 8]))
    cluster = _cluster(time_model, preset, hw, gpus, gemm_tile_tokens=draw(st.sampled_from([1, 16, 64])))
    experts = cluster.preset.num_experts
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    popularity = rng.permutation(1.0 / np.arange(1, experts + 1) ** draw(st.floats(0.0, 2.0)))
    load = rng.multinomial(draw(st.integers(0, 3000)), popularity / popularity.sum()).astype(np.float64)
    slots = -(-experts // gpus) + draw(st.integers(0, 2))
    extra = rng.integers(0, gpus * slots - experts + 1)  # spare replicas on GPUs with room
    room = np.full(gpus, slots) - np.bincount(np.arange(experts) % gpus, minlength=gpus)
    spare_gpu = np.repeat(np.arange(gpus), room)[rng.permutation(int(room.sum()))[:extra]]
    expert = np.r_[np.arange(experts), rng.integers(0, experts, size=spare_gpu.size)]
    gpu = np.r_[np.arange(experts) % gpus, spare_gpu]
    if draw(st.booleans()):
        tokens = balanced_split(expert, gpu, load, gpus, cluster.entry_tokens)
    else:
        share = rng.random(expert.size)
        tokens = round_split(share / np.bincount(expert, weights=share)[expert] * load[expert], expert, load)
    return cluster, load, slots, expert.size, expert, gpu, tokens.astype(np.float64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lossless_cases())
def test_floor_is_below_any_lossless_solution_at_scale(case):
    cluster, load, slots, replicas, expert, gpu, tokens = case
    assert np.allclose(np.bincount(expert, weights=tokens, minlength=load.size), load)
    layer, _ = cluster.moe_layer(gpu, tokens)
    floor = lossless_floor(cluster, slots, replicas).parts(load[None])
    assert floor.total_s[0] <= layer * (1 + 1e-9)
    work = np.bincount(gpu, weights=cluster.replica_s(tokens), minlength=cluster.num_gpus).max()
    assert floor.compute_s[0] <= work * (1 + 1e-9)


def _recorded_profile(experts: int = 8, top_k: int = 2, layers: int = 3, requests: int = 6, seed: int = 0):
    """A profile-like namespace with skewed per-token routing (what build_routing reads)."""
    rng = np.random.default_rng(seed)
    per = 20
    weights = 1.0 / np.arange(1, experts + 1) ** 1.5
    topk = np.array([[rng.choice(experts, size=top_k, replace=False, p=weights / weights.sum()) for _ in range(layers)]
                     for _ in range(requests * per)])
    return SimpleNamespace(
        path="recorded", topk_ids=topk.astype(np.int16), num_experts=experts,
        token_request=np.repeat(np.arange(requests), per).astype(np.int32),
        token_phase=np.tile(np.r_[np.zeros(14), np.ones(6)], requests).astype(np.uint8),
        token_position=np.tile(np.arange(per), requests).astype(np.int32), router_inputs=None, router_input_tokens=None,
    )


@pytest.mark.parametrize("time_model", SUMMED)
def test_bound_system_is_below_every_lossless_system_on_every_layer(time_model):
    from moeless_cli.bench.compare import bound_system
    from moeless_cli.bench.pipeline import SYSTEMS
    from moeless_cli.sim.routing import build_routing
    from moeless_cli.sim.simulator import SimConfig, replay, simulate
    from moeless_cli.workloads.traces import Trace

    cluster = _cluster(time_model)
    routing = build_routing(_recorded_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    config = SimConfig(keep_alive_s=1.0)
    trace = Trace("test", np.linspace(0.0, 1.0, 10), np.full(10, 60), np.full(10, 5))
    schedule = simulate("static", cluster, routing, trace, config)["schedule"]
    core, floor = bound_system(cluster, routing, schedule, config)
    assert core["moe_layer_ms"]["mean"] == pytest.approx(floor.mean() * 1e3)
    for name in (s for s in SYSTEMS if s != "oracle"):  # every lossless system the bench compares
        same = replay(name, cluster, routing, schedule, config)
        assert same.shape == floor.shape
        assert (floor <= same * (1 + 1e-9)).all(), name
    assert bound_system(_cluster("paper"), routing, schedule, config) is None
