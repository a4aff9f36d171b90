"""Unit tests of the pure planning package: each solver, the EPLB golden case, metrics, topology."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.planning import SOLVERS, PlanningProblem, solve
from moeless_cli.planning.bounds import max_load_lower_bound
from moeless_cli.planning.metrics import CostModel, imbalance, layer_metrics, static_gpu_loads
from moeless_cli.planning.plan import LayerPlan
from moeless_cli.planning.solvers.eplb import rebalance_experts
from moeless_cli.planning.solvers.moeless_paper import scale_replicas
from moeless_cli.planning.topology import build_topology, move_cost, pair_seconds_per_gb

# DeepSeek EPLB README example (public values, see INTEROP.md §4): hierarchical policy.
README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
README_LOGCNT = [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1], [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]


def skewed_loads(layers: int = 3, experts: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(1000.0 / np.arange(1, experts + 1) ** 1.1) for _ in range(layers)])


def test_eplb_matches_deepseek_readme_golden_case():
    phy2log, log2phy, logcnt = rebalance_experts(np.array(README_WEIGHT), 16, 4, 2, 8)
    assert phy2log.tolist() == README_PHY2LOG
    assert logcnt.tolist() == README_LOGCNT
    assert set(log2phy[0, 1].tolist()) == {13, 15}
    assert set(log2phy[1, 8].tolist()) == {3, 6}
    gpu_loads = LayerPlan(phy2log[0], np.arange(16) // 2, 1.0 / logcnt[0][phy2log[0]]).gpu_loads(
        np.array(README_WEIGHT[0], dtype=float), 8)
    assert gpu_loads.tolist() == [121.5, 86.5, 125, 113, 147.5, 131.5, 156, 152]


def test_static_places_expert_e_on_gpu_e_mod_g():
    load = skewed_loads(1, 12)
    plan = solve("static", load, PlanningProblem(num_gpus=4)).plan
    layer = plan.layers[0]
    assert layer.gpu.tolist() == [e % 4 for e in range(12)]
    assert np.allclose(layer.share, 1.0)


def test_eplb_uses_equal_slot_blocks_and_equal_shares():
    load = skewed_loads(2, 16)
    result = solve("eplb", load, PlanningProblem(num_gpus=4, slots_per_gpu=5))
    for layer in result.plan.layers:
        assert layer.num_replicas == 20
        assert layer.slots_used(4).tolist() == [5, 5, 5, 5]
        counts = layer.replica_counts(16)
        assert np.allclose(layer.share, 1.0 / counts[layer.expert])


def test_moeless_paper_stops_at_cv_threshold_and_reuses_previous_gpus():
    load = np.array([100.0, 10, 10, 10, 10, 10, 10, 10])
    counts = scale_replicas(load, 0.2, 64)
    per_replica = np.repeat(load / counts, counts)
    assert per_replica.std() / per_replica.mean() <= 0.2 and counts[0] > 1
    first = solve("moeless-paper", load[None, :], PlanningProblem(num_gpus=4, slots_per_gpu=6)).plan
    again = solve("moeless-paper", load[None, :], PlanningProblem(num_gpus=4, slots_per_gpu=6, previous=first)).plan
    before = set(zip(first.layers[0].expert.tolist(), first.layers[0].gpu.tolist()))
    after = set(zip(again.layers[0].expert.tolist(), again.layers[0].gpu.tolist()))
    assert after == before  # same loads and a warm previous plan: every function stays put


def test_ilp_reaches_perfect_balance_with_e_plus_g_minus_1_replicas():
    load = skewed_loads(3, 16, seed=1)
    result = solve("ilp", load, PlanningProblem(num_gpus=4, time_limit_s=5))
    for i, layer in enumerate(result.plan.layers):
        assert layer.num_replicas <= 16 + 4 - 1
        assert imbalance(layer.gpu_loads(load[i], 4)) <= 1.0 + 1e-6
        assert result.infos[i].status == "optimal" and result.infos[i].gap <= 1e-6


def test_ilp_beats_eplb_on_coarse_model():
    load = skewed_loads(4, 8, seed=2)
    problem = PlanningProblem(num_gpus=8, slots_per_gpu=2, time_limit_s=5)
    ilp = solve("ilp", load, problem).plan
    eplb = solve("eplb", load, problem).plan
    for i in range(4):
        assert imbalance(ilp.layers[i].gpu_loads(load[i], 8)) <= imbalance(eplb.layers[i].gpu_loads(load[i], 8)) + 1e-9


def test_ilp_calls_cbc_when_slots_are_too_tight_for_the_greedy_and_stays_feasible():
    # E == G * slots: no room for a second replica, so this is pure packing (no splits).
    load = np.array([[9.0, 8, 7, 6, 5, 4, 3, 2]])
    result = solve("ilp", load, PlanningProblem(num_gpus=4, slots_per_gpu=2, time_limit_s=5))
    layer = result.plan.layers[0]
    assert layer.num_replicas == 8 and layer.slots_used(4).max() <= 2
    assert layer.gpu_loads(load[0], 4).max() == pytest.approx(11.0)  # {9,2},{8,3},{7,4},{6,5}
    assert result.infos[0].method != "greedy" or result.infos[0].status == "optimal"


def test_replica_budget_and_hierarchical_eplb_with_nodes():
    load = skewed_loads(2, 16, seed=3)
    result = solve("ilp", load, PlanningProblem(num_gpus=8, num_nodes=2, replica_budget=18, time_limit_s=4))
    assert all(layer.num_replicas <= 18 for layer in result.plan.layers)
    eplb = solve("eplb", load, PlanningProblem(num_gpus=8, num_nodes=2, slots_per_gpu=3)).plan
    assert all(layer.num_replicas == 24 for layer in eplb.layers)


def test_joint_mode_gives_skewed_layers_more_replicas_within_the_global_budget():
    flat = np.full(16, 100.0)
    skewed = 1000.0 / np.arange(1, 17) ** 1.5
    load = np.stack([flat, skewed])
    result = solve("ilp", load, PlanningProblem(num_gpus=4, joint=True, replica_budget=36, time_limit_s=4))
    counts = [layer.num_replicas for layer in result.plan.layers]
    assert sum(counts) <= 36 and counts[1] > counts[0]


def test_errors_name_the_problem():
    with pytest.raises(MoelessError, match="more slots needed"):
        solve("ilp", np.ones((1, 20)), PlanningProblem(num_gpus=4, slots_per_gpu=4))
    with pytest.raises(MoelessError, match="replica-budget"):
        solve("ilp", np.ones((1, 8)), PlanningProblem(num_gpus=4, replica_budget=7))
    with pytest.raises(MoelessError, match="unknown solver"):
        solve("nope", np.ones((1, 8)), PlanningProblem(num_gpus=4))
    assert set(SOLVERS) == {"static", "eplb", "even-split", "moeless-paper", "ilp"}


def test_lower_bound_and_metrics():
    load = np.array([60.0, 20, 10, 10])
    assert max_load_lower_bound(load, 4, 4) == 60.0  # no spare replica: the hot expert stays whole
    assert max_load_lower_bound(load, 4, 7) == 25.0
    assert imbalance(static_gpu_loads(load, 2)) == pytest.approx(70 / 50)
    layer = LayerPlan.from_lists([0, 0, 1, 2, 3], [0, 1, 1, 0, 1], [0.5, 0.5, 1, 1, 1])
    m = layer_metrics(layer, load, 2, CostModel(alpha_s_per_token=1.0, beta_s_per_token=0.0, expert_gb=2.0))
    assert m.gpu_loads.tolist() == [40.0, 60.0] and m.replicas == 5
    assert m.time_s == 30.0 and m.cost_gbs == 30.0 * 5 * 2.0


def test_topology_prices_cross_node_moves_higher():
    graph = build_topology(4, 2, intra_node_gbps=100.0, inter_node_gbps=10.0)
    cost = pair_seconds_per_gb(graph)
    assert graph.nodes[3]["node"] == 1 and cost[0, 1] == pytest.approx(0.01) and cost[0, 2] == pytest.approx(0.1)
    old = LayerPlan.from_lists([0, 1], [0, 2], [1, 1])
    near = LayerPlan.from_lists([0, 0, 1], [0, 1, 2], [0.5, 0.5, 1])
    far = LayerPlan.from_lists([0, 0, 1], [0, 3, 2], [0.5, 0.5, 1])
    assert move_cost(near, old, cost, 1.0) == (1, pytest.approx(0.01))
    assert move_cost(far, old, cost, 1.0) == (1, pytest.approx(0.1))


@pytest.mark.parametrize("gpus", [4, 20])
def test_gpu_relabelling_keeps_replicas_where_the_previous_plan_loaded_them(gpus):
    from moeless_cli.planning.locality import align_gpus
    from moeless_cli.planning.topology import move_price

    load = skewed_loads(1, 2 * gpus, seed=4)
    first = solve("ilp", load, PlanningProblem(num_gpus=gpus, time_limit_s=2)).plan.layers[0]
    perm = np.random.default_rng(0).permutation(gpus)
    shuffled = LayerPlan(first.expert, perm[first.gpu], first.share)  # same plan, GPUs renamed
    price = move_price(first, np.ones((gpus, gpus)) - np.eye(gpus), 2 * gpus)
    aligned = align_gpus(shuffled, price)
    assert move_cost(aligned, first, np.ones((gpus, gpus)), 1.0)[0] == 0
    assert move_cost(shuffled, first, np.ones((gpus, gpus)), 1.0)[0] > 0
    assert np.allclose(np.sort(aligned.gpu_loads(load[0], gpus)), np.sort(first.gpu_loads(load[0], gpus)))


def test_swap_improve_and_share_polish_never_worsen_and_stay_feasible():
    from moeless_cli.planning.solvers.local_search import swap_improve
    from moeless_cli.planning.solvers.shares import rebalance_shares

    load = np.array([10.0, 9, 8, 1, 1, 1, 6, 4])
    start = LayerPlan.from_lists([0, 1, 2, 3, 4, 5, 6, 7, 0], [0, 0, 1, 1, 2, 2, 3, 3, 1], [0.5] + [1] * 7 + [0.5])
    swapped = swap_improve(start, load, 4, 3)
    polished = rebalance_shares(swapped, load, 4)
    for plan in (swapped, polished):
        assert plan.slots_used(4).max() <= 3 and (plan.replica_counts(8) >= 1).all()
        assert np.allclose(np.bincount(plan.expert, weights=plan.share, minlength=8), 1.0)
    peaks = [p.gpu_loads(load, 4).max() for p in (start, swapped, polished)]
    assert peaks[0] == 14.0 and peaks[1] < peaks[0] and peaks[2] <= peaks[1] + 1e-9
