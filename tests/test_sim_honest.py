"""The honest measurement (issue 12): physical time by default, host decisions charged, held-out replay,
a top-1 preset fed from top-2 routing, and a phased replay order."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.online.device_dispatch import BALANCED_KERNELS, PRIMARY_KERNELS
from moeless_cli.online.policies import ONLINE_POLICIES
from moeless_cli.sim import simulator
from moeless_cli.sim.hardware import get_hardware
from moeless_cli.sim.presets import get_preset
from moeless_cli.sim.routing import build_routing, held_out_requests
from moeless_cli.sim.simulator import SimConfig, recorded_request, replay, simulate
from moeless_cli.sim.timemodel import TIME_MODELS, ClusterModel
from tests.test_sim import _fake_profile, _trace

SYSTEMS = ("static", "eplb", "oracle", "moeless-paper", "moeless")


def _cluster(time_model: str = "physical", preset: str = "mixtral-8x7b") -> ClusterModel:
    return ClusterModel(get_hardware("a6000"), get_preset(preset), 8, time_model)


def test_physical_is_the_default_and_compute_is_the_idealisation():
    assert TIME_MODELS[0] == "physical" and "compute" in TIME_MODELS and "default" not in TIME_MODELS
    assert ClusterModel(get_hardware("a6000"), get_preset("mixtral-8x7b"), 8).time_model == "physical"
    from moeless_cli.bench.request import BenchRequest

    assert BenchRequest().time_model == "physical" and not BenchRequest().in_sample
    compute = _cluster("compute")
    # No weight streaming: one token on a replica costs its compute alone, far below one weight read.
    assert compute.replica_s(np.array([1.0]))[0] == pytest.approx(compute.token_s)
    assert _cluster().replica_s(np.array([1.0]))[0] == pytest.approx(compute.weight_s)


def test_the_dispatch_entry_cost_follows_the_time_model():
    physical, compute = _cluster(), _cluster("compute")
    assert compute.entry_tokens == 0.0 and _cluster("paper").entry_tokens == 0.0
    # physical: a replica's weight read in tokens of compute (352 MB at 650 GB/s over 0.53 ms ~ 153 tokens / 1.8 us)
    assert physical.entry_tokens == pytest.approx(physical.weight_s / physical.token_s)
    assert physical.entry_tokens > 50
    routing = build_routing(_fake_profile(), 32, 8, 2)
    setting = simulator.make_setting(physical, routing, SimConfig(), None)
    assert setting.entry_tokens == physical.entry_tokens


def test_only_the_published_policy_decides_on_the_host():
    on_host = {name for name, cls in ONLINE_POLICIES.items() if cls.decision_on_host}
    assert on_host == {"moeless-paper"}  # moeless and eplb+balanced split on the device (modelled kernels)


def _replays(config: SimConfig) -> dict[str, np.ndarray]:
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    schedule = simulate("static", cluster, routing, _trace(), SimConfig(keep_alive_s=1.0))["schedule"]
    return {name: replay(name, cluster, routing, schedule, config) for name in SYSTEMS}


def test_a_fixed_decision_charge_is_added_to_deciding_policies_only():
    free = _replays(SimConfig(keep_alive_s=1.0, decision="none"))
    charged = _replays(SimConfig(keep_alive_s=1.0, decision=0.004))
    for name in ("static", "oracle"):
        assert np.array_equal(free[name], charged[name]), name  # the engine's own layout: nothing added
    for name in ("eplb", "moeless-paper", "moeless"):  # vLLM's replica pick, the host split, the device split
        # Every layer pays 4 ms on top (or waits for a copy at least as long): the layers are at least 4 ms.
        assert charged[name].min() >= 0.004
        assert charged[name].mean() == pytest.approx(free[name].mean() + 0.004, rel=0.1)


def test_the_measured_charge_is_the_dispatch_calls_own_time(monkeypatch):
    clock = iter(np.arange(0.0, 1e6, 0.0025))  # each thread_time call moves 2.5 ms: a dispatch "takes" 2.5 ms
    monkeypatch.setattr(simulator, "thread_time", lambda: float(next(clock)))
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    for name in ("static", "moeless-paper"):
        report = simulate(name, cluster, routing, _trace(), SimConfig(keep_alive_s=1.0))["report"]
        decide = report["moe_layer_parts_ms"]["decide"]
        assert decide["mean"] == pytest.approx(2.5 if name == "moeless-paper" else 0.0)
        if name == "moeless-paper":
            assert report["moe_layer_ms"]["p50"] >= 2.5


def test_a_device_decision_is_charged_its_modelled_kernels_not_the_hosts_time(monkeypatch):
    clock = iter(np.arange(0.0, 1e6, 0.0025))  # the host "takes" 2.5 ms per dispatch call: not charged
    monkeypatch.setattr(simulator, "thread_time", lambda: float(next(clock)))
    cluster = _cluster()
    routing = build_routing(_fake_profile(), cluster.preset.moe_layers, cluster.preset.num_experts, 2)
    report = simulate("moeless", cluster, routing, _trace(), SimConfig(keep_alive_s=1.0))["report"]
    decide = report["moe_layer_parts_ms"]["decide"]
    balanced_s = BALANCED_KERNELS * cluster.hardware.kernel_s + cluster.collective_s()
    primary_s = PRIMARY_KERNELS * cluster.hardware.kernel_s
    assert primary_s * 1e3 - 1e-9 <= decide["p50"] <= balanced_s * 1e3 + 1e-9
    assert decide["p99"] <= balanced_s * 1e3 + 1e-9 and decide["mean"] < 0.1  # tens of microseconds, not 2.5 ms


@pytest.mark.parametrize("value, parsed", [("measured", "measured"), ("none", "none"), ("0.0003", 0.0003), (0.001, 0.001)])
def test_decision_cost_values(value, parsed):
    config = SimConfig(decision=value)
    config.validate()
    assert config.decision == parsed


@pytest.mark.parametrize("value", ["fast", "-1", "inf", "nan"])
def test_bad_decision_cost_is_refused(value):
    with pytest.raises(MoelessError, match="decision-cost"):
        SimConfig(decision=value).validate()


def test_held_out_requests_are_disjoint_and_keep_each_domains_order():
    domains = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])  # interleaved, like `mix`
    train, replay_ids = held_out_requests(domains)
    assert train.tolist() == [0, 1, 2, 3, 4, 5] and replay_ids.tolist() == [6, 7, 8, 9, 10, 11]
    phased = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # phases, like `shift`: both sides keep every phase, in order
    train, replay_ids = held_out_requests(phased)
    assert train.tolist() == [0, 1, 4, 5, 8] and replay_ids.tolist() == [2, 3, 6, 7, 9]
    assert phased[replay_ids].tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(MoelessError, match="in-sample"):
        held_out_requests(np.array([0]))


def test_a_held_out_replay_knows_only_the_training_loads():
    profile = _fake_profile(requests=6)
    train_ids, replay_ids = held_out_requests(np.zeros(6, dtype=np.int64))
    training = build_routing(profile, 32, 8, 2, requests=train_ids)
    held_out = build_routing(profile, 32, 8, 2, requests=replay_ids).with_history(training.history)
    assert set(training.request_ids.tolist()).isdisjoint(held_out.request_ids.tolist())
    assert sorted([*training.request_ids.tolist(), *held_out.request_ids.tolist()]) == list(range(6))
    assert np.array_equal(held_out.history, training.history)
    own = build_routing(profile, 32, 8, 2, requests=replay_ids)
    assert not np.array_equal(own.history, training.history)  # what the replay would have known in-sample
    assert not held_out.history.flags.writeable
    everything = build_routing(profile, 32, 8, 2)
    assert everything.request_ids.tolist() == list(range(6))
    assert np.allclose(everything.history, training.history + own.history)


def test_a_top1_preset_keeps_each_tokens_first_recorded_expert():
    profile = _fake_profile(requests=3)
    routing = build_routing(profile, 48, 16, 1)  # llama-4-scout's shape from top-2 of 8
    assert routing.split == 2 and routing.forecast_scale == 0.5
    truth = routing.truth.values  # [tokens, layers, 16]
    assert np.all(truth.sum(axis=2) == 1)  # one expert per token and layer
    first = profile.topk_ids[:, :3, 0].astype(np.int64)  # [tokens, layers]: the highest-weight recorded expert
    assert np.array_equal(truth.argmax(axis=2) % 8, first)
    assert np.allclose(routing.unfold(np.full(8, 4.0)), np.full(16, 1.0))  # a top-2 forecast in top-1 counts


def test_llama4_scout_preset():
    scout = get_preset("llama-4-scout")
    assert (scout.moe_layers, scout.num_experts, scout.top_k, scout.hidden, scout.expert_intermediate) == \
        (48, 16, 1, 5120, 8192)
    assert scout.shared_expert_params == 3 * 5120 * 8192 and scout.bytes_per_param == 2.0
    assert scout.default_hardware == "h100" and scout.routing_model == "tiny-mixtral"
    assert ClusterModel(get_hardware("h100"), scout, 8).slots_per_gpu() >= 2
    with pytest.raises(MoelessError, match="does not fit"):
        ClusterModel(get_hardware("a6000"), scout, 8).slots_per_gpu()


def test_phased_request_order_plays_each_recorded_request_in_turn():
    cycle, phases = recorded_request(4, 12, "cycle"), recorded_request(4, 12, "phases")
    assert [cycle(i) for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [phases(i) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(MoelessError, match="request order"):
        SimConfig(request_order="random").validate()


def test_the_predictors_learn_only_from_the_training_requests():
    from moeless_cli.predictor.profile_data import requests_load, routing_profile

    profile = _fake_profile(requests=4)  # 16 tokens per request
    tokens = profile.topk_ids.shape[0]
    profile.token_iteration = (np.arange(tokens) % 16 + 16 * (profile.token_request >= 2)).astype(np.int32)
    counted = np.zeros((32, 3, 8))  # [iterations, layers, experts], as the recorder counts them
    for token in range(tokens):
        for layer in range(3):
            counted[profile.token_iteration[token], layer, profile.topk_ids[token, layer]] += 1
    profile.load = counted
    assert np.array_equal(requests_load(profile, (0, 1, 2, 3)), counted)
    profile.router_inputs = np.zeros((tokens, 3, 4), dtype=np.float16)
    profile.router_input_tokens = np.arange(tokens)
    profile.request_domain = None
    train = routing_profile(profile, (0, 1))
    assert set(np.unique(train.samples.request_ids).tolist()) == {0, 1}
    assert np.array_equal(train.load + requests_load(profile, (2, 3)), profile.load)
    assert train.load[16:].sum() == 0  # the held-out requests' iterations carry none of their loads


def test_free_decisions_are_free_for_the_device_splits_mode_choice_too():
    cluster = _cluster()
    routing = build_routing(_fake_profile(), 32, 8, 2)
    charged = simulator.make_setting(cluster, routing, SimConfig(), None)
    assert charged.kernel_s == cluster.hardware.kernel_s > 0 and charged.counts_collective_s == cluster.collective_s() > 0
    free = SimConfig(decision="none")
    free.validate()
    setting = simulator.make_setting(cluster, routing, free, None)
    assert setting.kernel_s == 0.0 and setting.counts_collective_s == 0.0
