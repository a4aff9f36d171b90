"""Pairwise swaps: lower the busiest GPU by exchanging one of its replicas with a lighter one.

Swapping two replicas (with their token amounts) keeps every GPU's slot count and every
expert's replica count, so the plan stays feasible; a replica may also move to a GPU with a
free slot. Best-improvement steps until none helps; max-flow share polishing then follows.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.plan import LayerPlan

MAX_STEPS = 500


def swap_improve(layer: LayerPlan, load: np.ndarray, num_gpus: int, slots: int) -> LayerPlan:
    """load: [experts]. Returns an equally feasible plan whose busiest GPU is no busier."""
    expert, gpu = layer.expert.copy(), layer.gpu.copy()
    tokens = layer.share * load[expert]  # [replicas]
    held = np.zeros((load.size, num_gpus), dtype=bool)  # [experts, G]
    held[expert, gpu] = True
    gpu_load = np.bincount(gpu, weights=tokens, minlength=num_gpus)
    used = np.bincount(gpu, minlength=num_gpus)
    eps = 1e-12 * max(float(gpu_load.mean()), 1.0)
    for _ in range(MAX_STEPS):
        hot = int(np.argmax(gpu_load))
        peak = gpu_load[hot]
        best = (peak - eps, -1, -1, -1)  # (new pair max, replica on hot, other replica, target GPU)
        for r in np.flatnonzero(gpu == hot).tolist():
            # swap with replica s on GPU g: allowed when neither expert is already on the other GPU
            ok = (gpu != hot) & ~held[expert[r], gpu] & ~held[expert, hot] & (tokens < tokens[r])
            if ok.any():
                s_idx = np.flatnonzero(ok)
                pair = np.maximum(peak - tokens[r] + tokens[s_idx], gpu_load[gpu[s_idx]] + tokens[r] - tokens[s_idx])
                k = int(np.argmin(pair))
                if pair[k] < best[0]:
                    best = (float(pair[k]), r, int(s_idx[k]), int(gpu[s_idx[k]]))
            free = np.flatnonzero((used < slots) & ~held[expert[r]])
            if free.size:
                g = int(free[np.argmin(gpu_load[free])])
                pair = max(peak - tokens[r], gpu_load[g] + tokens[r])
                if pair < best[0]:
                    best = (pair, r, -1, g)
        _, r, s, g = best
        if r < 0:
            break
        held[expert[r], hot] = False
        held[expert[r], g] = True
        gpu_load[hot] -= tokens[r]
        gpu_load[g] += tokens[r]
        if s >= 0:
            held[expert[s], g] = False
            held[expert[s], hot] = True
            gpu_load[g] -= tokens[s]
            gpu_load[hot] += tokens[s]
            gpu[s] = hot
        else:
            used[hot] -= 1
            used[g] += 1
        gpu[r] = g
    return LayerPlan(expert, gpu, layer.share.copy())
