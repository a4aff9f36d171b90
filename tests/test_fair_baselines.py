"""Baselines as deployed (EPLB's pseudo-random dispatch, eplb+balanced), one billing rule, the Pareto sweep's pieces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.policies import ONLINE_POLICIES, PolicySetting, make_policy
from moeless_cli.planning.dispatch import gpu_work, random_split


def test_random_split_is_unbiased_whole_and_seeded():
    expert = np.array([0, 1, 1, 2, 2, 2, 3])  # 1, 2, 3 and 1 replicas
    load = np.array([7.0, 10.0, 30.0, 0.0])
    draws = np.stack([random_split(expert, load, np.random.default_rng(seed)) for seed in range(4000)])
    for tokens in draws[:50]:
        assert np.array_equal(tokens, np.rint(tokens)) and (tokens >= 0).all()
        assert np.array_equal(np.bincount(expert, weights=tokens, minlength=4), load)  # every token served once
    counts = np.bincount(expert)[expert]
    expected = load[expert] / counts  # equal shares in expectation, whatever the planner's shares
    stderr = np.sqrt(load[expert] * (1 / counts) * (1 - 1 / counts) / len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expected) <= 5 * stderr + 1e-12)
    assert draws[:, 1].std() > 0  # random, not a fixed split
    again = random_split(expert, load, np.random.default_rng(3))
    assert np.array_equal(again, draws[3])  # the same seed draws the same split
    with pytest.raises(ValueError, match="no replica"):
        random_split(np.array([0]), np.array([1.0, 2.0]), np.random.default_rng(0))


def _setting(E=8, G=4, slots=4, seed=0, **kw) -> PolicySetting:
    history = np.stack([np.random.default_rng(s).permutation(100.0 / np.arange(1, E + 1)) for s in range(2)])
    return PolicySetting(num_layers=2, num_experts=E, num_gpus=G, slots_per_gpu=slots, history=history,
                         replica_budget=E + G, dispatch_seed=seed, **kw)


def _eplb_splits(name: str, seed: int, loads: list[np.ndarray]) -> list[np.ndarray]:
    """Tokens per replica of layer 0, one iteration per load."""
    setting = _setting(seed=seed)
    policy = make_policy(name, setting, FunctionPool(setting.num_gpus, 1e6, 1.0))
    out = []
    for load in loads:
        out.append(policy.dispatch(0, load, 0.0).tokens)
        policy.end_iteration(0.0)
    return out


def test_eplb_dispatches_a_pseudo_random_replica_per_token_reproducibly():
    load = np.full(8, 60.0)
    loads = [load] * 300
    first, same, other = (_eplb_splits("eplb", seed, loads) for seed in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(first, same))  # deterministic for a seed
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))  # another seed draws otherwise
    assert len({tuple(t) for t in first}) > 1  # drawn afresh each iteration
    policy = make_policy("eplb", _setting(), FunctionPool(4, 1e6, 1.0))
    plan = policy.plans[0]
    replicas = np.bincount(plan.expert, minlength=8)[plan.expert]
    mean = np.mean(first, axis=0)
    assert np.allclose(mean, load[plan.expert] / replicas, rtol=0.08)  # equal shares, not the planner's
    fractional = make_policy("eplb", _setting(), FunctionPool(4, 1e6, 1.0)).dispatch(0, load + 0.5, 0.0).tokens
    assert np.allclose(fractional, (load + 0.5)[plan.expert] / replicas)  # a fractional load: the expectation


@settings(max_examples=40, deadline=None)
@given(E=st.integers(2, 12), G=st.integers(2, 6), extra=st.integers(0, 2), seed=st.integers(0, 10_000),
       scale=st.integers(1, 200))
def test_eplb_balanced_is_never_busier_than_eplb_on_the_same_placement(E, G, extra, seed, scale):
    slots = -(-E // G) + extra
    rng = np.random.default_rng(seed)
    history = rng.integers(1, 50, size=(1, E)).astype(float)
    setting = PolicySetting(num_layers=1, num_experts=E, num_gpus=G, slots_per_gpu=slots, history=history,
                            dispatch_seed=seed, dispatch_mode="balanced")
    eplb = make_policy("eplb", setting, FunctionPool(G, 1e6, 1.0))
    balanced = make_policy("eplb+balanced", setting, FunctionPool(G, 1e6, 1.0))
    assert np.array_equal(eplb.plans[0].expert, balanced.plans[0].expert)  # same placement
    for _ in range(3):
        load = rng.integers(0, scale + 1, size=E).astype(float)
        a, b = eplb.dispatch(0, load, 0.0), balanced.dispatch(0, load, 0.0)
        assert np.array_equal(np.bincount(b.expert, weights=b.tokens, minlength=E), load)
        assert gpu_work(b.gpu, b.tokens, G).max() <= gpu_work(a.gpu, a.tokens, G).max() + 1e-9
        for policy in (eplb, balanced):
            policy.end_iteration(0.0)


def test_eplb_balanced_is_registered_for_serve_and_bench():
    from moeless_cli.bench.pipeline import SYSTEMS

    assert "eplb+balanced" in ONLINE_POLICIES and "eplb+balanced" in SYSTEMS
    policy = ONLINE_POLICIES["eplb+balanced"]
    assert policy.serverful and not policy.lossy and policy.predictor_method is None


def test_a_plan_with_two_replicas_on_one_gpu_is_billed_for_both():
    pool = FunctionPool(num_gpus=2, expert_bytes=1e9, keep_alive_s=1.0)
    setting = PolicySetting(num_layers=1, num_experts=2, num_gpus=2, slots_per_gpu=2, history=np.array([[9.0, 1.0]]))
    policy = make_policy("static", setting, pool)
    assert pool.live_count() == 2 and pool.live_gb_seconds(10.0) == pytest.approx(20.0)
    pool.set_copies(0, 0, 0, 2, now=4.0)  # from t = 4 s the instance holds two copies (EPLB packs them so)
    assert pool.live_count() == 3
    assert pool.live_gb_seconds(10.0) == pytest.approx(20.0 + 6.0)
    pool.retire((0, 0, 0), 10.0)
    assert pool.live_gb_seconds(10.0) == pytest.approx(26.0) and policy.replicas() == 1


def test_memory_points_and_pareto_marks():
    from moeless_cli.bench.pareto import mark_pareto_optimal, memory_points

    points = memory_points(num_experts=8, num_gpus=8, slots_per_gpu=3)
    assert [(p.label, p.replicas_per_layer) for p in points] == [
        ("E+0", 8), ("E+G/2", 12), ("E+G", 16), ("E+2G, E+4G, memory", 24)]
    wide = memory_points(num_experts=64, num_gpus=8, slots_per_gpu=64)
    assert [p.replicas_per_layer for p in wide] == [64, 68, 72, 80, 96, 512]
    rows = mark_pareto_optimal([{"moe_layer_ms": 1.0, "gbs_live": 5.0}, {"moe_layer_ms": 2.0, "gbs_live": 3.0},
                                {"moe_layer_ms": 2.0, "gbs_live": 6.0}, {"moe_layer_ms": 1.0, "gbs_live": 5.0}])
    assert [r["pareto_optimal"] for r in rows] == [True, True, False, True]  # ties do not dominate each other
