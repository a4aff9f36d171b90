"""Cost-aware dispatch (`planning/cost_split.py`): valid whole-token splits, never worse than the splits
it starts from, and close to the exact optimum of the step cost on small random cases."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.planning.cost_split import (
    busiest_cost,
    cost_aware_split,
    exact_split_cost,
    lpt_whole,
    replica_costs,
)
from moeless_cli.planning.dispatch import balanced_split, gpu_work

ENTRIES, TILES = (0.0, 20.0, 143.0), (1, 16, 64)
# Measured on 4,000 such cases (two generators, 8 seeds of 500): cost_aware_split equals the MILP optimum
# in 98.8% of them (97.8-99.8% per seed), mean ratio 1.0007, worst 1.33 (one extra 16-token tile over an
# optimum of three); asserted with a margin on this file's fixed seed.
MIN_OPTIMAL_SHARE, MAX_RATIO = 0.95, 1.4


def random_case(rng: np.random.Generator):
    """(expert [R], gpu [R], load [E], G, entry, tile): E <= 6, G <= 4, R <= 10, loads <= 200, every
    expert with a replica, no expert twice on one GPU."""
    E, G = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    R = int(rng.integers(E, min(10, E * G) + 1))
    expert, gpu = list(range(E)), [int(g) for g in rng.integers(0, G, E)]
    pairs = set(zip(expert, gpu))
    while len(expert) < R:
        e, g = int(rng.integers(E)), int(rng.integers(G))
        if (e, g) not in pairs:
            pairs.add((e, g))
            expert.append(e)
            gpu.append(g)
    load = rng.integers(0, 201, E).astype(np.float64)
    if rng.random() < 0.5:  # skewed, with small and idle experts
        load = np.floor(load * rng.random(E) ** 2)
    return np.array(expert), np.array(gpu), load, G, float(rng.choice(ENTRIES)), int(rng.choice(TILES))


def test_replica_costs_are_the_physical_step_cost():
    tokens = np.array([0, 1, 3, 64, 65, 200, 143])
    assert replica_costs(tokens, 143.0, 64).tolist() == [0, 143, 143, 143, 143, 256, 192]
    assert replica_costs(tokens, 0.0, 1).tolist() == tokens.tolist()
    gpu = np.array([0, 0, 1, 1, 2, 2, 2])
    assert busiest_cost(gpu, tokens, 4, 143.0, 64) == 143 + 256 + 192


def test_splits_are_valid_and_never_worse_than_their_starts():
    rng = np.random.default_rng(7)
    for _ in range(300):
        expert, gpu, load, G, entry, tile = random_case(rng)
        split = cost_aware_split(expert, gpu, load, G, entry, tile)
        assert split.dtype == np.float64 and np.array_equal(split, np.rint(split)) and (split >= 0).all()
        assert np.array_equal(np.bincount(expert, weights=split, minlength=load.size), load)
        cost = busiest_cost(gpu, split, G, entry, tile)
        assert cost <= busiest_cost(gpu, balanced_split(expert, gpu, load, G, entry), G, entry, tile) + 1e-9
        assert cost <= busiest_cost(gpu, lpt_whole(expert, gpu, load, G, entry, tile), G, entry, tile) + 1e-9


def test_close_to_the_exact_optimum():
    rng = np.random.default_rng(11)
    optimal, ratios = 0, []
    cases = 150
    for _ in range(cases):
        expert, gpu, load, G, entry, tile = random_case(rng)
        cost = busiest_cost(gpu, cost_aware_split(expert, gpu, load, G, entry, tile), G, entry, tile)
        best, proven = exact_split_cost(expert, gpu, load, G, entry, tile, time_limit_s=20)
        assert proven
        assert cost >= best - 1e-6 * max(1.0, best)  # the MILP is a true optimum
        optimal += cost <= best + 1e-6 * max(1.0, best)
        ratios.append(cost / best if best > 0 else 1.0)
    assert optimal / cases >= MIN_OPTIMAL_SHARE, f"optimal in {optimal}/{cases}"
    assert max(ratios) <= MAX_RATIO


def test_linear_cost_gives_the_whole_token_optimum():
    """entry 0, tile 1: the cost is the token count, where balanced_split is the whole-token optimum."""
    rng = np.random.default_rng(3)
    for i in range(120):
        expert, gpu, load, G, _, _ = random_case(rng)
        split = cost_aware_split(expert, gpu, load, G, 0.0, 1)
        whole = gpu_work(gpu, balanced_split(expert, gpu, load, G), G).max(initial=0.0)
        assert busiest_cost(gpu, split, G, 0.0, 1) == whole
        if i < 30:
            assert busiest_cost(gpu, split, G, 0.0, 1) == pytest.approx(
                exact_split_cost(expert, gpu, load, G, 0.0, 1)[0], abs=1e-6)


def test_small_batches_stay_on_one_replica_and_large_ones_spread():
    expert, gpu = np.zeros(4, dtype=np.int64), np.arange(4)
    decode = cost_aware_split(expert, gpu, np.array([3.0]), 4, 143.0, 64)
    assert np.count_nonzero(decode) == 1
    prefill = cost_aware_split(expert, gpu, np.array([2048.0]), 4, 143.0, 64)
    assert prefill.tolist() == [512.0] * 4
    # 300 tokens > 4 tiles: the busiest GPU needs two tiles, and no more
    assert busiest_cost(gpu, cost_aware_split(expert, gpu, np.array([300.0]), 4, 20.0, 64), 4, 20.0, 64) == 128


def test_an_expert_with_load_and_no_replica_is_refused():
    with pytest.raises(ValueError, match="no replica"):
        cost_aware_split(np.array([0]), np.array([0]), np.array([5.0, 3.0]), 1, 0.0, 1)
