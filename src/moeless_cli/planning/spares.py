"""Spare replicas: fill a plan's unused replica budget where single batches straggle.

The ilp plan balances the *mean* load with the fewest replicas. One batch's load is not the mean:
a code prompt favours other experts than prose, and a decode step of one token needs its top-k
experts on k different GPUs to reach Oracle's floor ceil(T / G). moeless's dispatch
(`planning.dispatch.balanced_split`) reaches the best whole-token split the replicas allow, so what
limits it is which (expert, GPU) pairs exist. A spare replica of expert e on GPU g lets g take
e's tokens in any batch.

`fill_spares` adds, one at a time, the spare that most lowers the straggle over sample batches:
mean over batches of (busiest GPU's tokens after the optimal split) / ceil(T / G). Candidates
are (expert, GPU) pairs that some batch's busiest GPU would shed tokens through; the best few by
that count are scored exactly. It stops when the budget or the slots run out or nothing helps.
Spares get share 0: the plan's fixed shares (and its balance on the mean load) are unchanged, so a
runtime that follows shares ignores them; per-batch balancing uses them.

Arrays: `batches: [batches, experts]` whole token-to-expert counts of one layer per sample batch.
"""

from __future__ import annotations

import numpy as np

from moeless_cli.planning.dispatch import balanced_split, gpu_work
from moeless_cli.planning.plan import LayerPlan, Plan

CANDIDATES_SCORED = 6  # spares scored exactly per round (the most promising by vote)
MIN_GAIN = 1e-4  # stop when the best spare lowers the mean straggle by less


def straggle(expert: np.ndarray, gpu: np.ndarray, batches: np.ndarray, num_gpus: int) -> float:
    """expert, gpu: [replicas]; batches: [batches, experts]. Mean of busiest GPU / ceil(T / G)."""
    ratios = []
    for load in batches:
        total = float(load.sum())
        if total <= 0:
            continue
        peak = gpu_work(gpu, balanced_split(expert, gpu, load, num_gpus), num_gpus).max()
        ratios.append(peak / np.ceil(total / num_gpus - 1e-9))
    return float(np.mean(ratios)) if ratios else 1.0


def _votes(expert: np.ndarray, gpu: np.ndarray, batches: np.ndarray, num_gpus: int,
           free: np.ndarray) -> dict[tuple[int, int], int]:
    """(expert, GPU) spares that would let some batch's busiest GPU shed tokens, with how many batches."""
    holders: dict[int, set[int]] = {}
    for e, g in zip(expert.tolist(), gpu.tolist()):
        holders.setdefault(e, set()).add(g)
    votes: dict[tuple[int, int], int] = {}
    for load in batches:
        if load.sum() <= 0:
            continue
        tokens = balanced_split(expert, gpu, load, num_gpus)
        work = gpu_work(gpu, tokens, num_gpus)
        busiest = work.max()
        lighter = [g for g in range(num_gpus) if free[g] > 0 and work[g] <= busiest - 2]
        for r in np.flatnonzero((work[gpu] == busiest) & (tokens > 0)).tolist():
            e = int(expert[r])
            for g in lighter:
                if g not in holders[e]:
                    votes[(e, g)] = votes.get((e, g), 0) + 1
    return votes


def fill_spares(layer: LayerPlan, batches: np.ndarray, num_gpus: int, slots: int, max_replicas: int) -> LayerPlan:
    """Add spare replicas (share 0) to `layer` while they lower the straggle of `batches`."""
    expert, gpu, share = layer.expert.copy(), layer.gpu.copy(), layer.share.copy()
    batches = np.asarray(batches, dtype=np.float64)
    current = straggle(expert, gpu, batches, num_gpus)
    while expert.size < max_replicas and current > 1.0 + MIN_GAIN:
        free = slots - np.bincount(gpu, minlength=num_gpus)  # [num_gpus]
        votes = _votes(expert, gpu, batches, num_gpus, free)
        if not votes:
            break
        ranked = sorted(votes, key=lambda k: (-votes[k], k))[:CANDIDATES_SCORED]
        scored = [(straggle(np.append(expert, e), np.append(gpu, g), batches, num_gpus), e, g) for e, g in ranked]
        best, e, g = min(scored)
        if best > current - MIN_GAIN:
            break
        expert, gpu, share = np.append(expert, e), np.append(gpu, g), np.append(share, 0.0)
        current = best
    return LayerPlan(expert, gpu, share)


def fill_plan_spares(plan: Plan, batches: np.ndarray, slots: int, max_replicas: int) -> Plan:
    """batches: [batches, layers, experts]. `fill_spares` on every layer."""
    layers = [fill_spares(layer, batches[:, i], plan.num_gpus, slots, max_replicas)
              for i, layer in enumerate(plan.layers)]
    return Plan(plan.num_gpus, plan.num_experts, layers)


def straggle_per_layer(plan: Plan, batches: np.ndarray) -> list[float]:
    """batches: [batches, layers, experts]. `straggle` of every layer of the plan."""
    return [straggle(layer.expert, layer.gpu, batches[:, i], plan.num_gpus) for i, layer in enumerate(plan.layers)]


def sample_token_batches(topk: np.ndarray, request: np.ndarray, phase: np.ndarray, num_experts: int,
                         count: int = 128, seed: int = 0) -> np.ndarray:
    """Sample batches from per-token routing, as `fill_plan_spares` wants them.

    topk: [tokens, layers, k] expert ids; request: [tokens] request id; phase: [tokens] 0 prompt, 1 decode.
    Half the batches are decode steps of 1-8 random tokens, half prefill chunks of 16-512 consecutive
    prompt tokens of one request (as many as it has). Returns [count, layers, experts] counts.
    """
    rng = np.random.default_rng(seed)
    num_tokens, num_layers, _ = topk.shape
    prompts = [np.flatnonzero((request == r) & (phase == 0)) for r in np.unique(request)]
    prompts = [p for p in prompts if p.size]
    out = np.zeros((count, num_layers, num_experts))
    for i in range(count):
        if i % 2 == 0 or not prompts:
            tokens = rng.integers(0, num_tokens, int(rng.choice([1, 2, 4, 8])))
        else:
            prompt = prompts[int(rng.integers(0, len(prompts)))]
            size = min(prompt.size, int(rng.choice([16, 64, 256, 512])))
            start = int(rng.integers(0, prompt.size - size + 1))
            tokens = prompt[start:start + size]
        for layer in range(num_layers):
            out[i, layer] = np.bincount(topk[tokens, layer].reshape(-1).astype(np.int64), minlength=num_experts)
    return out
