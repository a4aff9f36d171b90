"""The shared control plane: dispatch, function lifecycle, policies, report core."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.online.batching import Request, RequestTiming
from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.device_dispatch import forecast_split
from moeless_cli.online.policies import ONLINE_POLICIES, PolicySetting, make_policy
from moeless_cli.online.report import CostTotals, build_report, latency_stats
from moeless_cli.planning.dispatch import (balance_whole, balanced_split, equal_split, gpu_work, lp_min_peak,
                                           round_split, share_split, water_fill)


def _zipf(num_experts: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(1000.0 / np.arange(1, num_experts + 1) ** 1.2)


def test_equal_and_share_split_preserve_tokens():
    expert = np.array([0, 0, 1, 2, 2, 2])
    load = np.array([10.0, 4.0, 9.0])
    tokens = equal_split(expert, load)
    assert np.allclose(tokens, [5, 5, 4, 3, 3, 3])
    assert np.allclose(share_split(expert, np.array([0.2, 0.8, 1, 0.5, 0.25, 0.25]), load), [2, 8, 4, 4.5, 2.25, 2.25])


def test_water_fill_balances_and_preserves_each_expert():
    E, G = 64, 8
    load = _zipf(E)
    # every expert on two neighbouring GPUs
    expert = np.repeat(np.arange(E), 2)
    gpu = np.stack([np.arange(E) % G, (np.arange(E) + 1) % G], axis=1).reshape(-1)
    tokens = water_fill(expert, gpu, load, G)
    assert np.allclose(np.bincount(expert, weights=tokens, minlength=E), load)
    assert (tokens >= -1e-9).all()
    work = gpu_work(gpu, tokens, G)
    static = np.bincount(np.arange(E) % G, weights=load, minlength=G)
    assert work.max() <= static.max()
    assert work.max() <= 1.02 * lp_min_peak(expert, gpu, load, G)


def test_water_fill_entry_cost_keeps_small_experts_whole():
    expert = np.array([0, 0, 1, 1])
    gpu = np.array([0, 1, 0, 1])
    load = np.array([5.0, 3.0])
    tokens = water_fill(expert, gpu, load, 2, entry_tokens=100.0)
    assert ((tokens > 0).sum()) == 2  # no expert split: splitting costs more than it saves
    assert np.allclose(np.bincount(expert, weights=tokens), load)


def test_water_fill_needs_a_replica_for_loaded_experts():
    with pytest.raises(ValueError):
        water_fill(np.array([0]), np.array([0]), np.array([1.0, 2.0]), 2)


def test_round_split_sums_exactly():
    expert = np.array([0, 0, 0, 1])
    tokens = np.array([3.4, 3.3, 3.3, 7.0])
    out = round_split(tokens, expert, np.array([10, 7]))
    assert out.dtype.kind == "i"
    assert np.bincount(expert, weights=out).tolist() == [10, 7]


@pytest.mark.parametrize("seed", range(6))
def test_balanced_split_reaches_the_whole_token_optimum(seed):
    """Few tokens (decode) and many (prefill), fine- and coarse-grained: the busiest GPU carries
    exactly ceil(LP optimum) whole tokens, the best any lossless split of whole tokens can do."""
    rng = np.random.default_rng(seed)
    G = 8
    for num_experts, top_k in ((8, 2), (64, 8)):
        for num_tokens in (1, 3, 40, 700):
            pairs = {(e, e % G) for e in range(num_experts)}
            pairs |= {(int(e), int(g)) for e, g in zip(rng.integers(0, num_experts, 2 * G), rng.integers(0, G, 2 * G))}
            expert = np.array([e for e, _ in sorted(pairs)])
            gpu = np.array([g for _, g in sorted(pairs)])
            load = np.zeros(num_experts)
            for _ in range(num_tokens):
                load[rng.choice(num_experts, top_k, replace=False)] += 1
            tokens = balanced_split(expert, gpu, load, G)
            assert np.array_equal(tokens, np.rint(tokens)) and (tokens >= 0).all()
            assert np.array_equal(np.bincount(expert, weights=tokens, minlength=num_experts), load)
            assert gpu_work(gpu, tokens, G).max() == np.ceil(lp_min_peak(expert, gpu, load, G) - 1e-6)


def test_balance_whole_fixes_two_experts_of_one_token_on_one_gpu():
    # Expert 0 lives on GPUs 0 and 1, expert 1 on GPUs 1 and 2, expert 2 on GPU 2 only; one token
    # routed to all three, first put 0 -> GPU 1 and 1 -> GPU 1: the path GPU 1 -(e1)-> GPU 2 is
    # blocked by expert 2, so the token of expert 0 must move back to GPU 0.
    expert, gpu = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2])
    tokens = balance_whole(np.array([0, 1, 1, 0, 1]), expert, gpu, 3)
    assert gpu_work(gpu, tokens.astype(float), 3).tolist() == [1, 1, 1]


def test_function_pool_lifecycle_and_accounting():
    pool = FunctionPool(num_gpus=2, expert_bytes=2e9, keep_alive_s=1.0, host_gbps=10.0, peer_gbps=40.0)
    cold = pool.warm_up(0, [0, 1], [0, 1], now=0.0)
    assert len(cold) == 2 and pool.counters.cold_starts == 2
    assert cold[0].ready_s == pytest.approx(0.2)  # 2 GB at 10 GB/s from host
    assert not pool.ready(0, 0, 0, 0.1) and pool.ready(0, 0, 0, 0.2)
    peer = pool.warm_up(0, [0], [1], now=0.5)  # expert 0 is warm on GPU 0: copied over the peer link
    assert peer[0].from_peer and peer[0].ready_s == pytest.approx(0.55)
    # back-to-back copies into one GPU queue on its link
    queued = pool.warm_up(1, [0, 1], [0, 0], now=1.0)
    assert queued[1].ready_s == pytest.approx(queued[0].ready_s + 0.2)
    assert pool.warm_up(0, [0], [0], now=1.0) == [] and pool.counters.warm_hits == 0  # not an invocation
    pool.invoke(1, [0, 1], [0, 0], dispatched_s=1.3, start_s=1.4)  # (1, 1, 0) still loading at 1.3
    assert pool.counters.warm_hits == 1
    pool.invoke(0, [0], [0], dispatched_s=1.0, start_s=1.0)
    pool.bill(0, replicas=1, busy_s=0.5)
    assert pool.busy_gbs == pytest.approx(1.0)
    retired = pool.reclaim(now=1.9)  # idle > 1 s goes; (0,0,0) was used at 1.0, layer 1 landed at 1.2+
    assert (0, 0, 0) not in retired and (0, 1, 1) in retired
    assert pool.counters.retired == len(retired)
    assert pool.counters.bytes_moved == pytest.approx(5 * 2e9)
    live = pool.live_gb_seconds(3.0)
    assert live > 0 and pool.live_count() == pool.counters.created - pool.counters.retired


def test_pinned_instances_survive_and_make_room_evicts_lru():
    pool = FunctionPool(num_gpus=2, expert_bytes=1e9, keep_alive_s=0.0)
    pool.warm_up(0, [0], [0], 0.0, pinned=True, preloaded=True)
    pool.warm_up(0, [1, 2, 3], [0, 0, 0], 0.0, preloaded=True)
    pool.warm_up(0, [1, 2], [1, 1], 0.0, preloaded=True)
    pool.invoke(0, [2], [0], 1.0, 1.0)
    assert pool.make_room(0, 0, slots=4, keep=set(), now=1.0)
    # least recently used went; expert 3's only warm instance is never the one to go
    assert pool.get(0, 1, 0) is None and pool.get(0, 2, 0) is not None and pool.get(0, 3, 0) is not None
    assert not pool.make_room(0, 0, slots=2, keep={(2, 0)}, now=1.0)
    pool.reclaim(5.0)
    assert pool.get(0, 0, 0) is not None


def _setting(E=16, G=4, L=2, slots=None, **kw) -> PolicySetting:
    history = np.stack([_zipf(E, seed=s) for s in range(L)])
    return PolicySetting(num_layers=L, num_experts=E, num_gpus=G, slots_per_gpu=slots or E // G + 2, history=history, **kw)


@pytest.mark.parametrize("name", list(ONLINE_POLICIES))
def test_every_policy_serves_every_token(name):
    setting = _setting(eplb_period=2, eplb_window=4)
    pool = FunctionPool(num_gpus=setting.num_gpus, expert_bytes=1e8, keep_alive_s=0.5, peer_gbps=50.0)
    policy = make_policy(name, setting, pool)
    now = 0.0
    for step in range(6):
        for layer in range(setting.num_layers):
            load = _zipf(setting.num_experts, seed=10 * step + layer)
            policy.prepare(layer, load * 1.1, now)
            d = policy.dispatch(layer, load, now)
            assert np.allclose(np.bincount(d.expert, weights=d.tokens, minlength=load.size), load)
            assert d.start_s >= now
            policy.observe(layer, load)
            now = d.start_s + 0.01
        policy.end_iteration(now)
    assert policy.lossy == (name == "oracle")
    assert policy.predictor_method == {"moeless-paper": "paper", "moeless": "moeless"}.get(name)
    slots = np.bincount(d.gpu, minlength=setting.num_gpus)
    if not name.startswith("eplb"):  # EPLB double-buffers during a switch
        assert slots.max() <= setting.slots_per_gpu


def test_moeless_balances_better_than_static_and_paper():
    setting = _setting(E=32, G=8, L=1, slots=6)
    load = _zipf(32, seed=3)
    setting.history[0] = load
    peaks = {}
    for name in ("static", "moeless-paper", "moeless"):
        pool = FunctionPool(num_gpus=8, expert_bytes=1e6, keep_alive_s=10.0)
        policy = make_policy(name, setting, pool)
        now = 0.0
        for _ in range(3):  # let copies land
            policy.prepare(0, load, now)
            d = policy.dispatch(0, load, now)
            now = d.start_s + 1.0
        peaks[name] = gpu_work(d.gpu, d.tokens, 8).max()
    floor = load.sum() / 8
    assert peaks["moeless"] <= peaks["moeless-paper"] <= peaks["static"]
    assert peaks["moeless"] <= 1.05 * floor


def test_setting_and_registry_errors():
    with pytest.raises(MoelessError):
        _setting(E=16, G=2, slots=4)
    with pytest.raises(MoelessError):
        make_policy("nope", _setting(), FunctionPool(4, 1.0, 1.0))


def test_report_core_shape():
    timings = []
    for i in range(4):
        t = RequestTiming(Request(i, 0.0, 10, 3))
        t.generated, t.first_token_s, t.finish_s = 3, 0.1 * (i + 1), 0.5 * (i + 1)
        timings.append(t)
    failed = RequestTiming(Request(9, 0.0, 5, 2))
    failed.failed, failed.finish_s = True, 1.0
    timings.append(failed)
    pool = FunctionPool(2, 1e9, 1.0)
    pool.warm_up(0, [0], [0], 0.0)
    cost = CostTotals(gbs_proxy=1.0, gbs_live=2.0, gbs_per_invocation=1.0, serverless_gpu_s=3.0, serverful_gpu_s=3600.0,
                      usd_per_gpu_hour=2.0)
    report = build_report("moeless", False, timings, np.array([0.001, 0.002, 0.003]), 12, 2.0, cost, pool.counters)
    assert report["requests"] == {"submitted": 5, "completed": 4, "failed": 1}
    assert set(report["latency_s"]) == {"ttft", "tpot", "e2e"}
    assert report["latency_s"]["ttft"]["p50"] == pytest.approx(0.25)
    assert report["moe_layer_ms"]["mean"] == pytest.approx(2.0)
    assert report["throughput_tokens_per_s"] == pytest.approx(6.0)
    assert report["cost"]["usd_serverful"] == pytest.approx(2.0)
    assert (report["cost"]["gbs_live"], report["cost"]["gbs_per_invocation"]) == (2.0, 1.0)
    assert report["functions"]["cold_starts"] == 1
    assert latency_stats([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_an_expert_scaled_to_zero_gets_a_cold_start_and_the_layer_waits():
    setting = _setting(E=8, G=2, L=1, slots=6)
    pool = FunctionPool(num_gpus=2, expert_bytes=1e9, keep_alive_s=0.1, host_gbps=10.0)
    policy = make_policy("moeless-paper", setting, pool)
    for table in pool.layers.values():  # unpin: a serverless pool that scaled to zero
        for inst in table.values():
            inst.pinned = False
    pool.reclaim(10.0)  # every idle instance goes
    assert pool.live_count() == 0
    load = np.zeros(8)
    load[3] = 5.0
    d = policy.dispatch(0, load, now=10.0)
    assert d.start_s == pytest.approx(10.1) and np.allclose(np.bincount(d.expert, weights=d.tokens, minlength=8), load)
    assert pool.counters.warm_hits == 0  # the layer waited for a copy: a cold start, not a warm hit


def test_warm_hits_count_invocations_of_replicas_already_warm():
    setting = _setting(E=8, G=2, L=2)
    for name in ("static", "moeless"):
        pool = FunctionPool(num_gpus=2, expert_bytes=1e9, keep_alive_s=10.0)
        policy = make_policy(name, setting, pool)
        invoked = 0
        for step in range(3):
            for layer in range(2):
                policy.prepare(layer, None, float(step))
                d = policy.dispatch(layer, np.full(8, 4.0), float(step))
                invoked += int((d.tokens > 0).sum())
        assert pool.counters.warm_hits == invoked > 0, name  # every replica ran was warm: all hits


def test_a_needed_copy_is_queued_past_a_busy_link():
    pool = FunctionPool(num_gpus=1, expert_bytes=1e9, keep_alive_s=1.0, host_gbps=1.0, max_backlog_s=0.1)
    pool.warm_up(0, [0], [0], 0.0)  # the copy link is busy until 1.0
    assert pool.warm_up(0, [1], [0], 0.0) == [] and pool.get(0, 1, 0) is None  # a pre-warm is refused
    cold = pool.warm_up(0, [1], [0], 0.0, needed=True)  # a layer waits for this one: queued
    assert len(cold) == 1 and cold[0].ready_s == pytest.approx(2.0)


def test_moeless_scales_out_only_where_a_replica_pays_its_weight_read():
    """A replica's first token costs a weight read (entry): a decode-size forecast keeps every expert whole
    and warms nothing; a prefill-size one with a hot expert warms copies of it that cut the busiest GPU's cost."""
    from moeless_cli.planning.cost_split import busiest_cost

    setting = _setting(E=8, G=4, L=1, slots=4, static_start=True, entry_tokens=64.0, tile_tokens=16)
    pool = FunctionPool(num_gpus=4, expert_bytes=1e6, keep_alive_s=10.0)
    policy = make_policy("moeless", setting, pool)
    before = pool.live_count()
    policy.prepare(0, np.array([3.0, 1, 1, 1, 1, 1, 0, 0]), 0.0)
    assert pool.live_count() == before
    hot = np.array([1600.0, 100, 100, 100, 100, 100, 100, 100])
    start_expert, start_gpu = pool.layer_replicas(0)
    start = busiest_cost(start_gpu, hot[start_expert], 4, 64.0, 16)
    expert, gpu = policy.prepare(0, hot, 0.0)
    assert pool.live_count() > before and set(expert[before:].tolist()) == {0}
    tokens = forecast_split(expert, gpu, hot, 4, 64.0, 16)
    assert busiest_cost(gpu, tokens, 4, 64.0, 16) < start


def test_pre_warming_takes_free_slots_only_and_retires_nothing():
    """With every slot of the layer taken, a forecast that straggles warms nothing and evicts no live
    replica (each may serve this batch); with free slots it copies the hot expert into them only."""
    hot = np.array([1600.0, 100, 100, 100, 100, 100, 100, 100])
    for slots in (2, 3):  # 8 experts on 4 GPUs: full, then one free slot per GPU
        setting = _setting(E=8, G=4, L=1, slots=slots, static_start=True, entry_tokens=64.0, tile_tokens=16)
        pool = FunctionPool(num_gpus=4, expert_bytes=1e6, keep_alive_s=10.0)
        policy = make_policy("moeless", setting, pool)
        before = set(zip(*(a.tolist() for a in pool.layer_replicas(0))))
        expert, gpu = policy.prepare(0, hot, 0.0)
        after = set(zip(expert.tolist(), gpu.tolist()))
        assert before <= after and np.bincount(gpu, minlength=4).max() <= slots
        added = after - before
        assert (not added) if slots == 2 else (added and {e for e, _ in added} == {0})
