"""The cluster simulator: time model, routing replay, the loop (pure numpy, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.planning.dispatch import round_split
from moeless_cli.sim.hardware import HARDWARE, get_hardware
from moeless_cli.sim.presets import PRESETS, get_preset
from moeless_cli.sim.routing import TokenTable, build_routing
from moeless_cli.sim.simulator import SimConfig, replay, replay_costs, replica_budget, simulate
from moeless_cli.sim.timemodel import ClusterModel
from moeless_cli.workloads.traces import Trace


def _cluster(preset="mixtral-8x7b", hw="a6000", gpus=8, time_model="compute") -> ClusterModel:
    return ClusterModel(get_hardware(hw), get_preset(preset), gpus, time_model)


@pytest.mark.parametrize("time_model", ["compute", "roofline", "physical"])
def test_oracle_is_a_floor_and_static_uniform_equals_it(time_model):
    cluster = _cluster(time_model=time_model)
    rng = np.random.default_rng(0)
    static_gpu = np.arange(8)
    for _ in range(50):
        tokens = rng.integers(0, 400, size=8).astype(float)
        oracle, _ = cluster.moe_layer(static_gpu, tokens, perfect_balance=True)
        static, _ = cluster.moe_layer(static_gpu, tokens)
        # any lossless split over any placement is no faster than Oracle
        expert = np.repeat(np.arange(8), 2)
        gpu = rng.integers(0, 8, size=16)
        split = rng.random(16)
        share = split / np.bincount(expert, weights=split)[expert]
        whole = round_split(share * tokens[expert], expert, tokens).astype(float)
        placed, _ = cluster.moe_layer(gpu, whole)
        assert oracle <= static + 1e-12
        assert oracle <= placed + 1e-12
    uniform = np.full(8, 240.0)
    assert cluster.moe_layer(static_gpu, uniform)[0] == pytest.approx(cluster.moe_layer(static_gpu, uniform, True)[0])


def test_paper_time_model_counts_the_slowest_replica_alone():
    cluster = _cluster(time_model="paper")
    gpu = np.array([0, 0, 1])
    tokens = np.array([100.0, 100.0, 50.0])
    paper, _ = cluster.moe_layer(gpu, tokens)
    default, _ = _cluster().moe_layer(gpu, tokens)
    assert paper < default  # two replicas sharing GPU 0 are not charged together


def test_slots_and_does_not_fit():
    assert _cluster().slots_per_gpu() >= 1
    assert _cluster("olmoe-1b-7b").slots_per_gpu() == 64  # capped at E
    with pytest.raises(MoelessError, match="does not fit"):
        _cluster("deepseek-v3", "a6000", 8).slots_per_gpu()
    assert _cluster("deepseek-v3", "h200", 8).slots_per_gpu() >= 32


def test_registries_and_unknown_names():
    assert set(HARDWARE) == {"a6000", "h100", "h200"}
    assert {"mixtral-8x7b", "phi-3.5-moe", "olmoe-1b-7b", "qwen3-30b-a3b", "deepseek-v3"} <= set(PRESETS)
    assert get_preset("mixtral-8x7b").expert_bytes == pytest.approx(3 * 4096 * 14336 * 2)
    with pytest.raises(MoelessError, match="unknown hardware"):
        get_hardware("tpu")
    with pytest.raises(MoelessError, match="unknown model preset"):
        get_preset("gpt-5")
    with pytest.raises(MoelessError, match="time-model"):
        _cluster(time_model="fast")


def test_prompt_sum_cycles():
    values = np.arange(12, dtype=float).reshape(4, 1, 3)  # 4 tokens, 1 layer, 3 experts
    table = TokenTable.build(values, [np.array([0, 1, 2, 3])])
    whole = values.sum(axis=0)
    assert np.allclose(table.prompt_sum(0, 0, 4), whole)
    assert np.allclose(table.prompt_sum(0, 3, 2), values[3] + values[0])  # wraps
    assert np.allclose(table.prompt_sum(0, 1, 9), 2 * whole + values[1])


def _fake_profile(num_experts=8, top_k=2, layers=3, requests=6, prompt=12, decode=4, seed=0):
    rng = np.random.default_rng(seed)
    per = prompt + decode
    n = requests * per
    weights = 1.0 / np.arange(1, num_experts + 1) ** 1.5
    topk = np.stack([
        np.stack([rng.choice(num_experts, size=top_k, replace=False, p=weights / weights.sum()) for _ in range(layers)])
        for _ in range(n)
    ])
    return SimpleNamespace(
        path="fake", topk_ids=topk.astype(np.int16), num_experts=num_experts,
        token_request=np.repeat(np.arange(requests), per).astype(np.int32),
        token_phase=np.tile(np.r_[np.zeros(prompt), np.ones(decode)], requests).astype(np.uint8),
        token_position=np.tile(np.arange(per), requests).astype(np.int32),
        router_inputs=None, router_input_tokens=None,
    )


def _trace(n=12, prompt=40, output=6):
    return Trace("test", np.linspace(0.0, 2.0, n), np.full(n, prompt), np.full(n, output))


def test_routing_maps_layers_cyclically_and_splits_experts():
    routing = build_routing(_fake_profile(), preset_layers=32, preset_experts=16, preset_top_k=2)
    assert routing.num_layers == 3 and sum(routing.multiplicity) == 32 and routing.split == 2
    load = routing.batch(routing.truth, [(0, 0, 12)], [(1, 0), (2, 3)])
    assert load.shape == (3, 16) and np.allclose(load.sum(axis=1), 14 * 2)  # every token picks 2 experts
    assert np.allclose(routing.fold(load).sum(axis=1), 28)
    with pytest.raises(MoelessError, match="top-"):
        build_routing(_fake_profile(), 32, 8, 4)
    with pytest.raises(MoelessError, match="multiple"):
        build_routing(_fake_profile(), 32, 12, 2)


@pytest.mark.parametrize("batching", ["continuous", "paper"])
def test_simulator_runs_every_system_and_costs_add_up(batching):
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    config = SimConfig(batching=batching, keep_alive_s=1.0, decision="none")  # the time model alone
    trace = _trace()
    results = {name: simulate(name, cluster, routing, trace, config) for name in
               ("static", "eplb", "eplb+balanced", "oracle", "moeless-paper", "moeless")}
    schedule = results["static"]["schedule"]
    same = {name: replay(name, cluster, routing, schedule, config) for name in results}
    for name, result in results.items():
        core = result["report"]
        assert core["requests"] == {"submitted": 12, "completed": 12, "failed": 0}
        assert core["lossy"] == (name == "oracle")
        assert core["generated_tokens"] == 12 * 6
        assert core["cost"]["serverful_gpu_s"] == pytest.approx(8 * core["makespan_s"])
        assert core["cost"]["usd_serverful"] == pytest.approx(core["cost"]["serverful_gpu_s"] * 0.80 / 3600)
        assert result["moe_layer_s"].size == core["iterations"] * 32
        assert same[name].size == len(schedule) * 32
        assert same[name].mean() >= same["oracle"].mean() - 1e-12  # Oracle is the floor on the same batches
        cost = core["cost"]  # one billing rule for every system; the paper's asymmetric proxy beside it
        assert cost["gbs_live"] > 0 and cost["gbs_per_invocation"] > 0
        assert cost["gbs_proxy"] == cost["gbs_live" if name in ("static", "eplb", "eplb+balanced", "oracle")
                                         else "gbs_per_invocation"]
    static = results["static"]["report"]
    assert static["cost"]["gbs_proxy"] == pytest.approx(static["makespan_s"] * 32 * 8 * cluster.preset.expert_bytes / 1e9)
    assert results["moeless"]["report"]["cost"]["gbs_proxy"] < static["cost"]["gbs_proxy"]
    assert same["moeless"].mean() <= same["static"].mean()


def test_per_invocation_gbs_is_bytes_times_seconds_of_each_invocation_for_a_static_system(monkeypatch):
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    calls = []
    original = ClusterModel.moe_layer

    def recorded(self, gpu, tokens, perfect_balance=False):
        seconds, gpu_s = original(self, gpu, tokens, perfect_balance)
        calls.append((int((tokens > 0).sum()), seconds))
        return seconds, gpu_s

    monkeypatch.setattr(ClusterModel, "moe_layer", recorded)
    core = simulate("static", cluster, routing, _trace(), SimConfig(keep_alive_s=1.0))["report"]
    mult = np.tile(routing.multiplicity, len(calls) // routing.num_layers)  # layer calls come in layer order
    expected = sum(m * used * cluster.preset.expert_bytes / 1e9 * s for m, (used, s) in zip(mult, calls))
    assert core["cost"]["gbs_per_invocation"] == pytest.approx(expected)
    live = core["makespan_s"] * 32 * 8 * cluster.preset.expert_bytes / 1e9  # pinned for the whole run
    assert core["cost"]["gbs_live"] == pytest.approx(live)


def test_replay_costs_hold_every_system_to_the_swept_budget():
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    schedule = simulate("static", cluster, routing, _trace(), SimConfig(keep_alive_s=1.0))["schedule"]
    gb_layers = cluster.preset.expert_bytes / 1e9 * 32
    for replicas in (8, 12, 16):
        config = SimConfig(keep_alive_s=1.0, replicas_per_layer=replicas)
        for name in ("eplb", "eplb+balanced", "moeless-paper", "moeless"):
            run = replay_costs(name, cluster, routing, schedule, config)
            assert run["moe_layer_s"].size == len(schedule) * 32 and run["end_s"] > 0
            held = run["gbs_live"] / (gb_layers * run["end_s"])  # time-averaged live replicas per layer
            assert 8 - 1e-9 <= held <= replicas + 1e-9 and run["gbs_per_invocation"] > 0
    base = replay_costs("eplb", cluster, routing, schedule, SimConfig(keep_alive_s=1.0))
    assert np.array_equal(base["moe_layer_s"], replay("eplb", cluster, routing, schedule, SimConfig(keep_alive_s=1.0)))


def test_serverless_systems_scale_within_memory_unless_held_to_eplbs_budget():
    cluster = _cluster("olmoe-1b-7b")  # 64 experts: memory holds far more replicas than EPLB's budget
    routing = build_routing(_fake_profile(num_experts=64, top_k=8), cluster.preset.moe_layers, 64, 8)
    budget = replica_budget(64, 8, cluster.slots_per_gpu(), None)
    assert budget < 8 * cluster.slots_per_gpu()
    most = {}
    for equal in (False, True):
        result = simulate("moeless", cluster, routing, _trace(), SimConfig(keep_alive_s=1.0, equal_budget=equal))
        most[equal] = result["report"]["replicas"]["max_per_layer"]
    assert most[True] <= budget < most[False] <= 8 * cluster.slots_per_gpu()


def test_policies_see_one_end_of_iteration_per_iteration(monkeypatch):
    from moeless_cli.online.policies import EplbPolicy

    calls = []
    original = EplbPolicy.end_iteration
    monkeypatch.setattr(EplbPolicy, "end_iteration", lambda self, now: (calls.append(now), original(self, now))[1])
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    config = SimConfig(keep_alive_s=1.0)
    result = simulate("eplb", cluster, routing, _trace(), config)
    assert len(calls) == result["report"]["iterations"]  # idle waits are not iterations (EPLB's period)
    calls.clear()
    replay("eplb", cluster, routing, result["schedule"], config)
    assert len(calls) == len(result["schedule"])


def test_sim_config_errors():
    with pytest.raises(MoelessError, match="batching"):
        SimConfig(batching="weekly").validate()
