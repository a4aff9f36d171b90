"""serving runtime: expert-parallel blocks give plain transformers' greedy tokens, token for token."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_models import cached_tiny_checkpoint, single_thread_torch

FAMILIES = ["mixtral", "olmoe", "qwen3_moe"]


def uneven_plan(num_experts: int, num_layers: int, workers: int):
    """Every expert once (round-robin) plus a second replica of experts 0-2, with unequal shares."""
    from moeless_cli.planning.plan import LayerPlan, Plan

    expert = list(range(num_experts)) + [0, 1, 2]
    gpu = [e % workers for e in range(num_experts)] + [(e + 1) % workers for e in range(3)]
    share = [1.0] * num_experts
    share[0], share[1], share[2] = 0.3, 0.6, 0.2
    share += [0.7, 0.4, 0.8]
    return Plan(workers, num_experts, [LayerPlan.from_lists(expert, gpu, share) for _ in range(num_layers)])


def build_runtime(loaded, policy: str, workers: int):
    from moeless_cli.online.fixed_plan import fixed_plan_policy
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    plan = uneven_plan(loaded.num_experts, loaded.num_moe_layers, workers)
    fixed = fixed_plan_policy(plan, balanced=policy == "moeless")  # moeless balances whole tokens at dispatch
    runtime = ExpertParallelRuntime(loaded, make_local_workers(workers, ["cpu"]), fixed)
    runtime.install()
    return runtime


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_generate_matches_plain(family):
    import torch

    from moeless_cli.models import load_moe_model

    loaded = load_moe_model(cached_tiny_checkpoint(family))
    ids = torch.randint(3, 300, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as batched generation does
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with single_thread_torch():
        plain = loaded.model.generate(**kwargs)
        for policy, workers in (("static", 2), ("moeless", 4)):
            runtime = build_runtime(loaded, policy, workers)
            served = loaded.model.generate(**kwargs)
            runtime.uninstall()
            assert torch.equal(served, plain), (family, policy)
            assert len(runtime.stats.layers) == 8 * loaded.num_moe_layers
            assert runtime.ledger.counters.created == (loaded.num_experts + 3) * loaded.num_moe_layers
            # the extra replicas really served tokens: more than one worker ran
            assert sum(1 for w in runtime.stats.layers[0].worker_s if w > 0) > 1


@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_continuous_batching_engine_matches_per_request_generate(family):
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.online.batching import ContinuousBatcher, Request
    from moeless_cli.serving.engine import ServeEngine

    loaded = load_moe_model(cached_tiny_checkpoint(family))
    gen = torch.Generator().manual_seed(1)
    lengths, outputs = [5, 9, 3, 12, 7], [6, 3, 8, 4, 5]
    prompts = {i: torch.randint(3, 300, (n,), generator=gen).tolist() for i, n in enumerate(lengths)}
    with single_thread_torch():
        expected = {}
        for i, p in prompts.items():
            out = loaded.model.generate(input_ids=torch.tensor([p]), max_new_tokens=outputs[i],
                                        min_new_tokens=outputs[i], do_sample=False, pad_token_id=0)
            expected[i] = out[0, len(p):].tolist()
        runtime = build_runtime(loaded, "moeless", 3)
        batcher = ContinuousBatcher(token_budget=8, max_batch=3)  # forces chunked prefill and joining
        for i in prompts:
            batcher.add(Request(i, 0.0, lengths[i], outputs[i]))
        engine = ServeEngine(loaded.model, runtime, prompts, max_batch=3)
        while batcher.has_work():
            it = batcher.next_iteration(0.0)
            engine.run(it)
            batcher.complete(it, 0.0)
        engine.close()
        runtime.uninstall()
    assert engine.generated == expected
    assert max(t.tokens for t in runtime.stats.layers) > 1  # requests really met in one MoE batch


def test_round_split_keeps_every_token():
    from moeless_cli.planning.dispatch import round_split

    rng = np.random.default_rng(0)
    for _ in range(50):
        load = rng.integers(0, 40, size=6)
        expert = np.concatenate([np.arange(6), rng.integers(0, 6, size=4)])
        frac = rng.random(expert.size)
        frac = frac / np.bincount(expert, weights=frac, minlength=6)[expert] * load[expert]
        counts = round_split(frac, expert, load)
        assert np.array_equal(np.bincount(expert, weights=counts, minlength=6).astype(int), load)
        assert (counts >= 0).all()


def test_engine_grows_threads_for_big_gathered_iterations():
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.online.batching import PaperBatcher, Request
    from moeless_cli.serving.engine import ServeEngine

    loaded = load_moe_model(cached_tiny_checkpoint("mixtral"))
    prompts = {i: [3 + i, 40, 41] for i in range(5)}
    with single_thread_torch():
        runtime = build_runtime(loaded, "static", 2)
        batcher = PaperBatcher()
        for i in prompts:
            batcher.add(Request(i, 0.1, 3, 2))
        engine = ServeEngine(loaded.model, runtime, prompts, max_batch=2)  # fewer threads than the batch
        now = 1.0
        while batcher.has_work():
            it = batcher.next_iteration(now)
            engine.run(it)
            batcher.complete(it, now)
        engine.close()
        runtime.uninstall()
        plain = loaded.model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=2, min_new_tokens=2,
                                      do_sample=False, pad_token_id=0)
    assert all(len(v) == 2 for v in engine.generated.values())
    assert engine.generated[0] == plain[0, 3:].tolist()


def test_replicas_copied_on_the_critical_path_are_not_warm_hits():
    import torch

    from moeless_cli.models import load_moe_model

    loaded = load_moe_model(cached_tiny_checkpoint("mixtral"))
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(1))
    runtime = build_runtime(loaded, "static", 2)
    c = runtime.ledger.counters
    with single_thread_torch(), torch.no_grad():
        loaded.model(input_ids=ids)
        warm, created = c.warm_hits, c.created
        assert warm > 0
        for worker in runtime.workers:  # layer 0's replicas leave and nothing is prepared ahead:
            for key in [k for k in worker.replicas if k[0] == 0]:  # the next call copies them back in
                worker.drop(*key)
        runtime._warm = lambda *args: 0.0
        loaded.model(input_ids=ids)
    runtime.uninstall()
    copied = c.created - created
    assert copied > 0 and c.warm_hits - warm == warm - copied  # the same replicas ran; copied ones were cold


def with_device_table(policy, tile_tokens: int):
    """The fixed-plan policy offering its plan as a per-layer replica table (the device split's input),
    as the Policy protocol's optional `device_table` does."""
    from moeless_cli.planning.device_split import replica_table

    setting = policy.setting
    tables = {layer: replica_table(plan.expert, plan.gpu, setting.num_experts, setting.num_gpus)
              for layer, plan in enumerate(policy.plans)}
    policy.device_table = tables.get
    policy.setting.tile_tokens = tile_tokens  # small tiles: the split spreads the tiny batches
    return policy


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_device_split_generate_matches_plain(family):
    import torch

    from moeless_cli.models import load_moe_model

    loaded = load_moe_model(cached_tiny_checkpoint(family))
    ids = torch.randint(3, 300, (4, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with single_thread_torch():
        plain = loaded.model.generate(**kwargs)
        runtime = build_runtime(loaded, "moeless", 4)
        with_device_table(runtime.policy, tile_tokens=2)
        hits = runtime.policy.pool.counters.warm_hits
        served = loaded.model.generate(**kwargs)
        runtime.uninstall()
    assert torch.equal(served, plain)
    layers = runtime.stats.layers
    assert len(layers) == 6 * loaded.num_moe_layers
    assert all(t.decide_s > 0 for t in layers)  # the device decision, timed on its own
    assert all(t.decide_s <= t.dispatch_s for t in layers)
    assert all(sum(t.worker_tokens) == t.tokens * loaded.top_k for t in layers)  # every pair ran once
    assert max(sum(1 for w in t.worker_tokens if w) for t in layers) > 1  # split over workers
    assert runtime.policy.pool.counters.warm_hits > hits  # the replicas that ran were invoked
    assert set(runtime._tables) == set(range(loaded.num_moe_layers))  # one cached table per layer
    assert set(runtime.stats.split_modes) == {"balanced", "primary"}  # both tried (and both exact: same tokens)


@pytest.mark.parametrize("mode", ["balanced", "primary"])
def test_device_split_runs_follow_each_pairs_replica(mode):
    """The runs the workers get (used replicas by expert, their pair counts, over the expert-grouped
    pairs) put every pair on the worker `pair_replica` names for it; primary keeps each expert whole."""
    import torch

    from moeless_cli.planning.device_split import replica_table
    from moeless_cli.serving import routing

    expert = np.array([0, 1, 2, 3, 0, 0, 2])
    gpu = np.array([0, 1, 2, 3, 1, 2, 3])
    table = routing.device_table(replica_table(expert, gpu, 4, 4), "cpu", None)
    assert routing.device_table(replica_table(expert, gpu, 4, 4), "cpu", table) is table  # unchanged: cached
    flat = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(3))
    flat[:120] = 0  # a hot expert: spread over its three replicas
    counts = torch.bincount(flat, minlength=4)
    split = routing.device_split(counts, flat, table, entry_tokens=4.0, tile_tokens=8, started=0.0, mode=mode)
    order, _ = routing.group_pairs(flat, 1)
    by_runs = np.repeat(split.gpu, split.counts)  # worker of each position of `order`
    assert np.array_equal(by_runs, split.pair_gpu()[order].numpy())
    assert np.array_equal(np.bincount(split.expert, weights=split.counts, minlength=4), counts.numpy())
    assert split.mode == mode
    if mode == "balanced":
        assert len(set(split.gpu[split.expert == 0].tolist())) > 1
    else:  # every expert on its first replica only
        assert split.expert.tolist() == [0, 1, 2, 3] and split.gpu.tolist() == table.gpu_host[:, 0].tolist()


@pytest.mark.slow
def test_dist_device_split_matches_plain(tmp_path):
    """Two gloo ranks: the global counts from one all_gather per layer, the device split on them, the
    pairs' rows exchanged all-to-all: plain transformers' greedy tokens."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import torch

    import moeless_cli
    from moeless_cli.models import load_moe_model

    model = cached_tiny_checkpoint("mixtral")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(moeless_cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    script = str(Path(__file__).with_name("dist_split_rank.py"))
    ranks = [subprocess.Popen([sys.executable, script, str(model), str(tmp_path)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    loaded = load_moe_model(model)
    ids = torch.randint(3, 300, (5, 9), generator=torch.Generator().manual_seed(4))
    with single_thread_torch():
        plain = loaded.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert result["tokens"] == plain.tolist()
    assert len(result["decide_s"]) == 4 * loaded.num_moe_layers and min(result["decide_s"]) > 0
    counts = np.array(result["rank_counts"])  # the last layer call's [world, E] gathered counts
    assert counts.shape == (2, loaded.num_experts) and counts.sum() == 5 * loaded.top_k  # one decode step
    assert result["replicas_here"] < (loaded.num_experts + 3) * loaded.num_moe_layers  # only its share
    assert result["device_tables"] == loaded.num_moe_layers  # every layer split on the device
