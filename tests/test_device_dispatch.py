"""moeless's device-side split in the policies: modes, their modelled cost, the adaptive choice, and the
memory-aware pinning (online/device_dispatch.py, online/policies.py)."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.online.device_dispatch import BALANCED_KERNELS, SHARE_KERNELS, DeviceDispatcher
from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.policies import PolicySetting, make_policy
from moeless_cli.planning.cost_split import busiest_cost, replica_costs
from moeless_cli.planning.plan import LayerPlan, Plan

KERNEL_S, COLLECTIVE_S, TOKEN_S = 3e-6, 25e-6, 1e-6


def _dispatcher(mode: str = "adaptive", entry: float = 0.0, tile: int = 1) -> DeviceDispatcher:
    return DeviceDispatcher(num_layers=1, num_gpus=2, entry_tokens=entry, tile_tokens=tile, token_s=TOKEN_S,
                            kernel_s=KERNEL_S, collective_s=COLLECTIVE_S, mode=mode)


# expert 0 on GPUs 0 and 1, expert 1 on GPU 0 only
EXPERT, GPU = np.array([0, 0, 1]), np.array([0, 1, 0])


def test_replica_cost_is_weight_streaming_against_whole_tiles():
    assert replica_costs(np.array([0.0, 1.0, 64.0, 65.0, 200.0]), 100.0, 64).tolist() == [0, 100, 100, 128, 256]
    assert busiest_cost(np.array([0, 0, 1]), np.array([1.0, 0.0, 65.0]), 2, 100.0, 64) == 128


def test_balanced_mode_balances_the_true_counts_and_costs_kernels_and_a_collective():
    d = _dispatcher("balanced")
    d.prefer(0, EXPERT, GPU, np.array([10.0, 0.0, 10.0]))  # the forecast wanted expert 0 on GPU 0 only
    tokens, seconds = d.split(0, EXPERT, GPU, np.array([100.0, 100.0]))
    assert np.bincount(EXPERT, weights=tokens).tolist() == [100, 100]
    assert tokens.tolist() == [0, 100, 100]  # expert 0 moves off the GPU expert 1 must use
    assert seconds == pytest.approx(BALANCED_KERNELS * KERNEL_S + COLLECTIVE_S)


def test_shares_mode_follows_the_forecast_proportions_without_a_collective():
    d = _dispatcher("shares")
    d.prefer(0, EXPERT, GPU, np.array([30.0, 10.0, 5.0]))
    tokens, seconds = d.split(0, EXPERT, GPU, np.array([8.0, 3.0]))
    assert tokens.tolist() == [6, 2, 3]  # 3:1 of expert 0's 8 tokens, whole
    assert seconds == pytest.approx(SHARE_KERNELS * KERNEL_S)
    fresh = _dispatcher("shares")  # no forecast yet: the first replica of each expert takes all
    assert fresh.split(0, EXPERT, GPU, np.array([8.0, 3.0]))[0].tolist() == [8, 0, 3]


def test_adaptive_mode_balances_only_where_it_paid_off_before():
    d = _dispatcher()
    d.prefer(0, EXPERT, GPU, np.array([10.0, 0.0, 10.0]))
    # Large batches: sharing (or the primary replicas) piles expert 0 onto GPU 0 beside expert 1;
    # balancing saves 1,000 token units (1 ms) for ~0.12 ms of kernels and a collective: it balances
    # (from the first batch, cheap insurance then; below).
    for _ in range(4):
        _, seconds = d.split(0, EXPERT, GPU, np.array([1000.0, 1000.0]))
        assert seconds == pytest.approx(d.decision_s("balanced"))
    # Tiny batches (another size class): balancing saves 1 unit (1 us), less than it costs: the layer
    # keeps the primary replicas, the cheapest decision.
    first = d.split(0, EXPERT, GPU, np.array([1.0, 1.0]))
    later = d.split(0, EXPERT, GPU, np.array([1.0, 1.0]))
    assert first[1] == pytest.approx(d.decision_s("primary")) and later[1] == pytest.approx(d.decision_s("primary"))
    assert later[0].tolist() == [1, 0, 1]  # each expert on its preferred replica
    assert d.decision_s("primary") < d.decision_s("shares") < d.decision_s("balanced")


def _plan_setting(**kw) -> PolicySetting:
    # expert 0 has two replicas (shares 0.5 / 0.5) and a spare of expert 1 (share 0) on GPU 0
    layer = LayerPlan(expert=np.array([0, 0, 1, 1]), gpu=np.array([0, 1, 1, 0]), share=np.array([0.5, 0.5, 1.0, 0.0]))
    plan = Plan(layers=[layer], num_experts=2, num_gpus=2)
    return PolicySetting(num_layers=1, num_experts=2, num_gpus=2, slots_per_gpu=2, history=np.ones((1, 2)), plan=plan,
                         **kw)


@pytest.mark.parametrize("pin, pinned", [("base", 2), ("plan", 4)])
def test_moeless_pins_one_instance_per_expert_and_lets_the_rest_scale_in(pin, pinned):
    pool = FunctionPool(num_gpus=2, expert_bytes=1e8, keep_alive_s=1.0)
    policy = make_policy("moeless", _plan_setting(pin=pin), pool)
    assert pool.live_count() == 4 and sum(inst.pinned for inst in pool.layers[0].values()) == pinned
    pool.reclaim(10.0)  # a lull longer than the keep-alive
    assert pool.live_count() == pinned
    kept = sorted(pool.layers[0])
    assert {e for e, _ in kept} == {0, 1}  # every expert keeps an instance
    if pin == "base":
        assert (1, 0) not in kept  # the share-0 spare went first
    assert policy.dispatch(0, np.array([4.0, 4.0]), 10.0).tokens.sum() == 8


def test_the_setting_refuses_an_unknown_pin():
    from moeless_cli.errors import MoelessError

    with pytest.raises(MoelessError, match="pin"):
        make_policy("moeless", _plan_setting(pin="all"), FunctionPool(num_gpus=2, expert_bytes=1e8, keep_alive_s=1.0))


def test_the_preference_spreads_first_replicas_even_where_the_forecast_rounds_to_none():
    """Small batches pay one weight read per used expert: with nothing forecast, each expert's first
    replica still lands where it adds the least reads (here: experts 1..7 on their own GPUs, not all on
    GPU 0 with expert 0), as static EP's one-expert-per-GPU layout would."""
    from moeless_cli.online.device_dispatch import forecast_split
    from moeless_cli.planning.device_split import replica_table

    experts = 8
    expert = np.array([0] + [e for e in range(1, experts) for _ in range(2)])  # [replicas]
    gpu = np.array([0] + [g for e in range(1, experts) for g in (0, e)])  # expert e >= 1 on GPU 0 and GPU e
    preference = forecast_split(expert, gpu, np.full(experts, 0.2), experts, 100.0, 64)  # rounds to 0 tokens each
    first = replica_table(expert, gpu, experts, experts, preference).gpu[:, 0]  # [experts] column-0 GPU
    assert sorted(first.tolist()) == list(range(experts))  # one first replica per GPU


def test_serve_chooses_the_mode_it_measured_faster_and_retries_the_other():
    from moeless_cli.online.device_dispatch import SERVE_RETRY_EVERY, MeasuredChoice

    choice = MeasuredChoice(num_layers=1)
    ran = []
    for _ in range(3 * SERVE_RETRY_EVERY):
        mode = choice.mode(0, pairs=16)
        ran.append(mode)
        choice.record(0, 16, mode, {"balanced": 2e-3, "primary": 1e-3}[mode])  # primary measures faster
    assert ran[:2] == ["balanced", "primary"]  # each tried once first
    assert ran.count("balanced") == 1 + 3  # then only on every SERVE_RETRY_EVERY-th call
    assert choice.mode(0, pairs=4096) == "balanced"  # another size class starts over
    assert {MeasuredChoice(num_layers=1, modes=("primary",)).mode(0, p) for p in (1, 100)} == {"primary"}


def test_home_mode_routes_like_static_ep_for_free_where_every_home_is_warm():
    """Tiny batches pay one weight read per used expert whatever the split: the home mode (no kernel) wins
    them; an expert whose home is not warm makes the mode unavailable."""
    from moeless_cli.online.device_dispatch import HOME_KERNELS

    d = _dispatcher(entry=100.0)
    d.set_home(0, np.array([1, 0]))  # expert 0 at home on GPU 1, expert 1 on GPU 0
    for _ in range(3):
        tokens, seconds = d.split(0, EXPERT, GPU, np.array([1.0, 1.0]))
    assert tokens.tolist() == [0, 1, 1] and seconds == HOME_KERNELS * KERNEL_S == 0.0
    # expert 0's home (GPU 1) not warm: home is out, the split still serves every token
    tokens, seconds = d.split(0, EXPERT[[0, 2]], GPU[[0, 2]], np.array([1.0, 1.0]))
    assert tokens.sum() == 2 and seconds > 0.0


def test_a_size_class_first_batch_balances_only_where_that_is_cheap_insurance():
    # First batch of a class (no evidence): balancing's extra decision (30 kernels and a collective, 115 us) is
    # over a quarter of a 200-pair batch's mean GPU work (100 us) and under a quarter of a 2,000-pair one's.
    premium = BALANCED_KERNELS * KERNEL_S + COLLECTIVE_S - KERNEL_S
    assert 0.25 * 200 * TOKEN_S / 2 < premium <= 0.25 * 2_000 * TOKEN_S / 2
    d = _dispatcher()
    d.prefer(0, EXPERT, GPU, np.array([10.0, 0.0, 10.0]))
    assert d.split(0, EXPERT, GPU, np.array([100.0, 100.0]))[1] == pytest.approx(d.decision_s("primary"))
    assert d.split(0, EXPERT, GPU, np.array([1000.0, 1000.0]))[1] == pytest.approx(d.decision_s("balanced"))
    # Weight reads count too: with a read worth 1,000 tokens, each touched expert makes a small batch's work
    # large enough (2 x 1,000 units over 2 GPUs) for the same premium.
    heavy = _dispatcher(entry=1000.0)
    heavy.prefer(0, EXPERT, GPU, np.array([10.0, 0.0, 10.0]))
    assert heavy.split(0, EXPERT, GPU, np.array([100.0, 100.0]))[1] == pytest.approx(heavy.decision_s("balanced"))


def test_a_repeated_forecast_reuses_its_split_and_the_memo_stays_bounded(monkeypatch):
    """The forecast's split is a local search (about a millisecond per call on the host): a warm set and
    rounded forecast seen before give the same preference without searching again; the memo keeps only
    the FORECAST_MEMO most recent."""
    import moeless_cli.online.device_dispatch as dd

    searches = []
    real = dd.cost_aware_split
    monkeypatch.setattr(dd, "cost_aware_split", lambda *a, **kw: searches.append(1) or real(*a, **kw))
    d = _dispatcher(entry=4.0, tile=2)
    d.prefer_forecast(0, EXPERT, GPU, np.array([30.2, 9.9]))
    first = dict(d.preference[0])
    d.prefer_forecast(0, EXPERT, GPU, np.array([29.8, 10.1]))  # rounds to the same whole tokens
    assert len(searches) == 1 == d.forecast_searches and d.preference[0] == first
    fresh = _dispatcher(entry=4.0, tile=2)
    fresh.prefer(0, EXPERT, GPU, dd.forecast_split(EXPERT, GPU, np.array([30.0, 10.0]), 2, 4.0, 2))
    assert fresh.preference[0] == first  # the remembered split is the split
    d.prefer_forecast(0, EXPERT, GPU, np.array([3.0, 10.0]))
    assert len(searches) == 3  # another forecast searches (the second was `fresh`'s)
    monkeypatch.setattr(dd, "FORECAST_MEMO", 2)
    for load in range(5):
        d.prefer_forecast(0, EXPERT, GPU, np.array([float(load), 1.0]))
    assert len(d._forecast_splits) == 2
