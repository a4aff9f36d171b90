"""DeepSeek EPLB's policy choice: hierarchical only when the model's expert groups divide by the nodes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeless_cli.errors import MoelessError
from moeless_cli.plan_io import read_plan
from moeless_cli.planning import PlanningProblem, solve
from moeless_cli.planning.metrics import imbalance
from moeless_cli.planning.solvers.eplb import rebalance_experts

# DeepSeek EPLB README example (INTEROP.md §4): 2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs.
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]], dtype=float)
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]

# Global policy worked by hand: weight [60, 30, 20, 10, 10, 10], 8 replicas on 4 GPUs (2 slots each).
# Replicate: slot 6 -> expert 0 (60), slot 7 -> expert 0 (tie 30 vs 30, lower index): loads per replica
# [20, 30, 20, 10, 10, 10, 20, 20]. Pack (stable, heaviest first; least-loaded pack with room, lower index
# on ties): 30 -> GPU0, 20s -> GPU1, GPU2, GPU3, GPU1; 10s -> GPU2, GPU3, GPU0. GPU loads [40, 40, 30, 30].
HAND_WEIGHT = np.array([[60.0, 30, 20, 10, 10, 10]])
HAND_PHY2LOG = [[1, 5, 0, 0, 2, 3, 0, 4]]
HAND_LOGCNT = [[3, 1, 1, 1, 1, 1]]


def gpu_loads(weight: np.ndarray, phy2log: np.ndarray, logcnt: np.ndarray, num_gpus: int) -> np.ndarray:
    """weight: [E], phy2log: [P], logcnt: [E]. Returns [num_gpus] tokens per GPU, equal shares."""
    per_slot = weight[phy2log] / logcnt[phy2log]
    return per_slot.reshape(num_gpus, -1).sum(axis=1)


def test_hierarchical_readme_golden_case_through_the_solver():
    problem = PlanningProblem(num_gpus=8, num_nodes=2, num_groups=4, slots_per_gpu=2)
    plan = solve("eplb", README_WEIGHT, problem).plan
    assert [layer.expert.tolist() for layer in plan.layers] == README_PHY2LOG
    assert plan.layers[0].gpu_loads(README_WEIGHT[0], 8).tolist() == [121.5, 86.5, 125, 113, 147.5, 131.5, 156, 152]
    node_of_group = [set(problem.node_of(plan.layers[0].gpu[plan.layers[0].expert // 3 == k]).tolist())
                     for k in range(4)]
    assert all(len(nodes) == 1 for nodes in node_of_group), "a group's replicas stay on one node"


@pytest.mark.parametrize("groups,nodes", [(1, 1), (1, 2), (3, 2), (6, 4)])
def test_global_policy_hand_derived(groups, nodes):
    phy2log, log2phy, logcnt = rebalance_experts(HAND_WEIGHT, 8, groups, nodes, 4)
    assert phy2log.tolist() == HAND_PHY2LOG
    assert logcnt.tolist() == HAND_LOGCNT
    assert log2phy[0, 0].tolist() == [2, 6, 3]  # replica ranks 0, 1, 2: original slot, then slots 6 and 7
    assert log2phy[0, 1].tolist() == [0, -1, -1]
    assert gpu_loads(HAND_WEIGHT[0], phy2log[0], logcnt[0], 4).tolist() == [40, 40, 30, 30]


def test_readme_weight_with_groups_not_dividing_nodes_is_the_global_policy():
    global_policy = rebalance_experts(README_WEIGHT, 16, 1, 1, 8)
    for groups, nodes in ((3, 2), (1, 2), (4, 8)):
        other = rebalance_experts(README_WEIGHT, 16, groups, nodes, 8)
        assert all(np.array_equal(a, b) for a, b in zip(global_policy, other))
    assert global_policy[0].tolist() != README_PHY2LOG  # the README's groups change the answer


@settings(max_examples=25, deadline=None)
@given(nodes=st.sampled_from([2, 4, 8]), slots=st.integers(2, 4), skew=st.floats(0.0, 2.0),
       seed=st.integers(0, 2**16))
def test_one_group_on_many_nodes_equals_the_global_policy(nodes, slots, skew, seed):
    experts, gpus = 32, 16
    rng = np.random.default_rng(seed)
    load = np.stack([rng.permutation(1000.0 / np.arange(1, experts + 1) ** skew) for _ in range(2)])
    one_node = solve("eplb", load, PlanningProblem(num_gpus=gpus, slots_per_gpu=slots)).plan
    many = solve("eplb", load, PlanningProblem(num_gpus=gpus, num_nodes=nodes, slots_per_gpu=slots)).plan
    for i, (a, b) in enumerate(zip(one_node.layers, many.layers)):
        assert np.array_equal(a.expert, b.expert) and np.array_equal(a.gpu, b.gpu)
        assert imbalance(a.gpu_loads(load[i], gpus)) == imbalance(b.gpu_loads(load[i], gpus))


def test_hierarchical_keeps_each_group_on_one_node():
    rng = np.random.default_rng(7)
    load = rng.zipf(1.5, size=(3, 64)).astype(float)
    problem = PlanningProblem(num_gpus=16, num_nodes=4, num_groups=8, slots_per_gpu=5)
    plan = solve("eplb", load, problem).plan
    for layer in plan.layers:
        node = problem.node_of(layer.gpu)
        for k in range(8):
            assert len(set(node[layer.expert // 8 == k].tolist())) == 1
        assert np.bincount(node, minlength=4).tolist() == [20] * 4


def test_groups_must_divide_the_experts():
    with pytest.raises(MoelessError, match="--groups 5 must be a positive divisor of the 12 experts"):
        solve("eplb", README_WEIGHT, PlanningProblem(num_gpus=8, num_groups=5, slots_per_gpu=2))
    with pytest.raises(MoelessError, match="--groups 0"):
        solve("eplb", README_WEIGHT, PlanningProblem(num_gpus=8, num_groups=0, slots_per_gpu=2))


def write_loads(path, weight: np.ndarray) -> None:
    rows = [f"{i},{e},{int(c)}" for i, row in enumerate(weight) for e, c in enumerate(row)]
    path.write_text("layer,expert,count\n" + "\n".join(rows) + "\n")


def test_plan_cli_groups_option(cli, tmp_path):
    loads, out = tmp_path / "readme.csv", tmp_path / "plan.json"
    write_loads(loads, README_WEIGHT)
    args = ("plan", "--loads", loads, "--gpus", "8", "--nodes", "2", "--slots-per-gpu", "2", "--solver", "eplb")
    result = cli(*args, "--groups", "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert [layer.expert.tolist() for layer in read_plan(out)[0].layers] == README_PHY2LOG
    assert orjson.loads(result.stdout)["layers"][0]["imbalance_after"] == pytest.approx(156 / 129.125)
    bad = cli(*args, "--groups", "5", "--out", out)
    assert bad.exit_code != 0 and "--groups 5 must be a positive divisor" in bad.output
