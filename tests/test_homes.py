"""Home replicas (planning/homes.py): one per expert, E / G per GPU, among a placement's replicas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moeless_cli.planning.homes import balanced_homes


def test_homes_give_every_gpu_its_share_and_prefer_the_larger_replica():
    # expert 0 on GPUs 0 (share .8) and 1 (.2); expert 1 on GPU 0 only; experts 2, 3 on GPU 1 only... plus GPU 0
    expert = np.array([0, 0, 1, 2, 3, 3])
    gpu = np.array([0, 1, 0, 1, 1, 0])
    share = np.array([0.8, 0.2, 1.0, 1.0, 0.9, 0.1])
    home = balanced_homes(expert, gpu, share, num_experts=4, num_gpus=2)
    assert np.bincount(home, minlength=2).tolist() == [2, 2]
    assert home.tolist() == [0, 0, 1, 1]  # expert 0 keeps its larger replica, expert 3 moves to fit


def test_no_homes_when_no_choice_balances_or_experts_do_not_divide():
    expert, gpu, share = np.arange(4), np.zeros(4, dtype=np.int64), np.ones(4)  # everything on GPU 0
    assert balanced_homes(expert, gpu, share, 4, 2) is None
    assert balanced_homes(np.arange(3), np.array([0, 1, 0]), np.ones(3), 3, 2) is None  # 3 experts, 2 GPUs


@pytest.mark.parametrize("seed", range(40))
def test_homes_exist_exactly_when_some_choice_balances(seed):
    rng = np.random.default_rng(seed)
    experts, gpus = [(4, 2), (6, 3), (8, 4)][seed % 3]
    expert, gpu = [], []
    for e in range(experts):
        for g in rng.choice(gpus, int(rng.integers(1, 3)), replace=False):
            expert.append(e)
            gpu.append(int(g))
    expert, gpu = np.array(expert), np.array(gpu)
    home = balanced_homes(expert, gpu, rng.random(expert.size), experts, gpus)
    options = [sorted(set(gpu[expert == e].tolist())) for e in range(experts)]
    exists = any(all(c.count(g) == experts // gpus for g in range(gpus)) for c in itertools.product(*options))
    assert (home is not None) == exists
    if home is not None:
        assert all(home[e] in options[e] for e in range(experts))
        assert np.bincount(home, minlength=gpus).tolist() == [experts // gpus] * gpus


def test_a_plan_gets_static_eps_layout_as_homes_when_memory_holds_it():
    from moeless_cli.planning.homes import homes_for_plan

    # a load-balancing plan: hot expert 0 alone on GPU 0 (and on GPU 1), experts 1-3 crowded on GPU 1
    expert, gpu, share = np.array([0, 0, 1, 2, 3]), np.array([0, 1, 1, 1, 1]), np.array([0.5, 0.5, 1.0, 1.0, 1.0])
    assert balanced_homes(expert, gpu, share, 4, 2) is None
    home, new = homes_for_plan(expert, gpu, share, 4, num_gpus=2, slots_per_gpu=4, max_replicas=8)
    assert home.tolist() == [0, 1, 0, 1]  # e mod G: the home mode is static EP
    assert new.tolist() == [False, False, True, False]  # only expert 2's home is not in the plan
    assert homes_for_plan(expert, gpu, share, 4, num_gpus=2, slots_per_gpu=4, max_replicas=5) is None  # no room
    assert homes_for_plan(expert, gpu, share, 4, num_gpus=3, slots_per_gpu=4, max_replicas=8) is None  # 4 % 3
    # a plan whose own replicas admit other homes still gets static EP's layout where memory holds it,
    # and its own homes where it does not
    expert, gpu, share = np.array([0, 1, 2, 3]), np.array([1, 0, 1, 0]), np.ones(4)  # e on GPU (e + 1) mod 2
    assert balanced_homes(expert, gpu, share, 4, 2).tolist() == [1, 0, 1, 0]
    home, new = homes_for_plan(expert, gpu, share, 4, num_gpus=2, slots_per_gpu=4, max_replicas=8)
    assert home.tolist() == [0, 1, 0, 1] and new.all()
    home, new = homes_for_plan(expert, gpu, share, 4, num_gpus=2, slots_per_gpu=3, max_replicas=8)
    assert home.tolist() == [1, 0, 1, 0] and not new.any()
