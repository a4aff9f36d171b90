"""DeepSeek EPLB, reimplemented from its published description (numpy, same tie order).

Replicate: each redundant slot goes to the expert with the highest load per replica.
Pack: heaviest replica first into the least-loaded pack with a free place; every pack has the
same number of places. Hierarchical (N nodes): pack the model's expert groups (DeepSeek-V3's
n_group: contiguous blocks of E / num_groups experts) onto nodes, replicate within a node, then
pack replicas onto the node's GPUs. DeepSeek's rule picks it when num_groups % N == 0; otherwise
(num_groups 1, the default, included) the global policy: the same routine with 1 group and 1 node.
Slot p lives on GPU p // (P / G).
"""

from __future__ import annotations

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.planning.plan import LayerPlan, PlanningProblem


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """weight: [layers, items], items % num_packs == 0. Returns pack index and rank in pack, [layers, items]."""
    num_layers, num_items = weight.shape
    per_pack = num_items // num_packs
    if per_pack == 1:
        index = np.tile(np.arange(num_items, dtype=np.int64), (num_layers, 1))
        return index, np.zeros_like(index)
    pack_index = np.full((num_layers, num_items), -1, dtype=np.int64)
    rank_in_pack = np.full((num_layers, num_items), -1, dtype=np.int64)
    for i in range(num_layers):
        pack_weight = [0.0] * num_packs
        pack_items = [0] * num_packs
        for item in np.argsort(-weight[i], kind="stable").tolist():
            pack = min((p for p in range(num_packs) if pack_items[p] < per_pack), key=pack_weight.__getitem__)
            pack_index[i, item] = pack
            rank_in_pack[i, item] = pack_items[pack]
            pack_weight[pack] += weight[i, item]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight: [layers, logical]. Returns phy2log [layers, physical], replica rank [layers, physical],
    logcnt [layers, logical]."""
    num_layers, num_logical = weight.shape
    rows = np.arange(num_layers)
    phy2log = np.tile(np.arange(num_physical, dtype=np.int64), (num_layers, 1))
    rank = np.zeros((num_layers, num_physical), dtype=np.int64)
    logcnt = np.ones((num_layers, num_logical), dtype=np.int64)
    for p in range(num_logical, num_physical):
        hottest = np.argmax(weight / logcnt, axis=-1)  # first index on ties
        phy2log[:, p] = hottest
        rank[:, p] = logcnt[rows, hottest]
        logcnt[rows, hottest] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    """perm: [layers, n] permutations. Returns their inverses."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.tile(np.arange(perm.shape[1]), (perm.shape[0], 1)), axis=1)
    return inv


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight: [layers, E]. Returns phy2log [layers, P], log2phy [layers, E, maxcnt] (-1 padded),
    logcnt [layers, E]. Hierarchical when num_groups % num_nodes == 0, else global."""
    weight = np.asarray(weight, dtype=np.float64)
    num_layers, num_logical = weight.shape
    if num_groups % num_nodes != 0:
        num_groups = num_nodes = 1
    assert num_logical % num_groups == 0 and num_gpus % num_nodes == 0 and num_replicas % num_gpus == 0
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_replicas // num_gpus
    # 1. groups -> nodes
    group_tokens = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    group_pack, group_rank = balanced_packing(group_tokens, num_nodes)
    log2mlog = (((group_pack * groups_per_node + group_rank) * group_size)[:, :, None] + np.arange(group_size)).reshape(
        num_layers, -1
    )
    mlog2log = _inverse(log2mlog)
    # 2. replicas within each node
    mlog_tokens = np.take_along_axis(weight, mlog2log, axis=-1).reshape(-1, num_logical // num_nodes)
    phy2mlog, phy_rank, mlogcnt = replicate_experts(mlog_tokens, num_replicas // num_nodes)
    # 3. replicas -> GPUs within each node
    phy_tokens = np.take_along_axis(mlog_tokens / mlogcnt, phy2mlog, axis=-1)
    pack, rank_in_pack = balanced_packing(phy_tokens, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank_in_pack)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=-1)
    offsets = np.arange(0, num_logical, num_logical // num_nodes).reshape(1, -1, 1)
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) + offsets).reshape(num_layers, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=-1)
    pphy_rank = np.take_along_axis(phy_rank, pphy2phy, axis=-1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=-1)
    log2phy = np.full((num_layers, num_logical, int(logcnt.max())), -1, dtype=np.int64)
    for i in range(num_layers):
        for p in range(num_replicas):
            log2phy[i, phy2log[i, p], pphy_rank[i, p]] = p
    return phy2log, log2phy, logcnt


def eplb_replica_count(num_experts: int, max_replicas: int, num_gpus: int) -> int:
    """EPLB fills equal slot blocks: the largest multiple of G within the budget."""
    count = (max_replicas // num_gpus) * num_gpus
    if count < num_experts:
        raise MoelessError(
            f"eplb needs a replica count that is a multiple of {num_gpus} GPUs and at least {num_experts} "
            f"experts, but at most {max_replicas} replicas are allowed; raise --replica-budget or slots"
        )
    return count


def check_groups(num_experts: int, num_groups: int) -> None:
    """The model's expert groups must split its experts evenly (DeepSeek-V3: 256 experts, 8 groups)."""
    if num_groups < 1 or num_experts % num_groups:
        raise MoelessError(
            f"--groups {num_groups} must be a positive divisor of the {num_experts} experts "
            "(the model's expert groups, e.g. DeepSeek-V3's n_group 8); use 1 for a model without groups"
        )


def eplb_layer(load: np.ndarray, problem: PlanningProblem, previous: LayerPlan | None, seconds: float) -> LayerPlan:
    """load: [experts]. Hierarchical when problem.num_groups % problem.num_nodes == 0, else global."""
    num_experts, num_gpus = load.size, problem.num_gpus
    check_groups(num_experts, problem.num_groups)
    replicas = eplb_replica_count(num_experts, problem.max_replicas(num_experts), num_gpus)
    phy2log, _, logcnt = rebalance_experts(load[None, :], replicas, problem.num_groups, problem.num_nodes, num_gpus)
    expert = phy2log[0]
    gpu = np.arange(replicas, dtype=np.int64) // (replicas // num_gpus)
    return LayerPlan(expert, gpu, 1.0 / logcnt[0][expert])
