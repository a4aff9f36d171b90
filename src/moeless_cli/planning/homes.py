"""Home replicas: one replica per expert, E / G of them on every GPU, so routing to them is static EP's.

Static expert parallelism sends a token's pair for expert e to rank e // (E / G) (or e mod G): the
dispatch computes the rank from the expert id, with no table. Any layout that puts exactly E / G
experts on every GPU is static EP's up to a renaming of the experts, and the renaming is free at
load time: permute the router's output rows (and the experts' storage order) once, and the gate's
top-k ids are the new names. So when a placement with spares holds, for each expert, one *home*
replica such that every GPU holds E / G homes, sending every pair to its expert's home costs no
decision kernel at all (the device split's `home` mode, `online/device_dispatch.py`), while the
other replicas stay available to the modes that balance.

`homes_for_plan` gives moeless's plans static EP's own layout, expert e on GPU e mod G, adding the
home replicas a plan lacks when memory holds them: the home mode is then static EP itself, and
moeless leaves it only where its measured choice finds another mode cheaper. Other layouts with E / G
homes per GPU are not better on small batches, whose cost is how many distinct experts a GPU reads,
which a plan's mean load does not predict: homes balancing the planned load were 0.3% slower than
static EP on held-out OLMoE decode traffic, homes among a plan's own replicas (larger shares first)
0.12% slower on shifting domains. Where memory cannot hold the static layout, `balanced_homes` picks
the homes among the plan's replicas, preferring each expert's larger shares, by augmenting paths
(Kuhn's matching with GPU capacities): a perfect assignment exists iff the search finds one, so None
means no choice of replicas can give every GPU E / G homes (no home mode). eplb+balanced, which
cannot add replicas, takes `balanced_homes` of EPLB's own.
"""

from __future__ import annotations

import numpy as np


def balanced_homes(expert: np.ndarray, gpu: np.ndarray, share: np.ndarray, num_experts: int,
                   num_gpus: int) -> np.ndarray | None:
    """expert, gpu, share: [replicas] a placement. The home GPU of every expert [experts] with exactly
    E / G homes per GPU, each a GPU that holds a replica of its expert (larger shares tried first), or
    None when E is not a multiple of G or no such choice exists."""
    if num_experts % num_gpus:
        return None
    capacity = num_experts // num_gpus
    options: list[list[int]] = [[] for _ in range(num_experts)]  # per expert: its GPUs, larger share first
    for r in np.lexsort((np.arange(expert.size), -np.asarray(share, dtype=np.float64), expert)).tolist():
        if int(gpu[r]) not in options[int(expert[r])]:
            options[int(expert[r])].append(int(gpu[r]))
    if any(not o for o in options):
        return None
    home = np.full(num_experts, -1, dtype=np.int64)
    members: list[list[int]] = [[] for _ in range(num_gpus)]  # per GPU: the experts housed there

    def place(e: int, visited: set[int]) -> bool:
        for g in options[e]:  # a free home first (not one this path is vacating)
            if g not in visited and len(members[g]) < capacity:
                members[g].append(e)
                home[e] = g
                return True
        for g in options[e]:  # else move one of g's experts elsewhere (an augmenting path)
            if g in visited:
                continue
            visited.add(g)
            for other in list(members[g]):
                members[g].remove(other)
                if place(other, visited):
                    members[g].append(e)
                    home[e] = g
                    return True
                members[g].append(other)
                home[other] = g
        return False

    for e in sorted(range(num_experts), key=lambda e: len(options[e])):  # the most constrained first
        if not place(e, set()):
            return None
    return home


def homes_for_plan(expert: np.ndarray, gpu: np.ndarray, share: np.ndarray, num_experts: int, num_gpus: int,
                   slots_per_gpu: int, max_replicas: int) -> tuple[np.ndarray, np.ndarray] | None:
    """expert, gpu, share: [replicas] a plan. Homes [experts] for the plan, and which of them are new
    replicas (not in the plan) [experts] bool: static EP's layout (e mod G) when the plan holds it or the
    new replicas fit in `slots_per_gpu` per GPU and `max_replicas` in all, else the plan's own replicas
    where they can be homes; None when E is not a multiple of G or neither is possible."""
    if num_experts % num_gpus:
        return None
    static = np.arange(num_experts, dtype=np.int64) % num_gpus
    held = set(zip(expert.tolist(), gpu.tolist()))
    new = np.array([(e, int(g)) not in held for e, g in enumerate(static.tolist())], dtype=bool)  # [experts]
    used = np.bincount(np.concatenate([gpu, static[new]]), minlength=num_gpus)  # [gpus] slots with the new homes
    if used.max(initial=0) <= slots_per_gpu and expert.size + int(new.sum()) <= max_replicas:
        return static, new
    home = balanced_homes(expert, gpu, share, num_experts, num_gpus)
    return None if home is None else (home, np.zeros(num_experts, dtype=bool))
