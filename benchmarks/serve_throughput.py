"""serve's local backend vs plain transformers, side by side in one run (target: >= 0.85x tokens/s,
identical tokens), and the online step of one layer (target: < 1 ms for 64 experts on 8 workers).

Part 1 runs the same left-padded prompt batches through `model.generate` (greedy, KV cache) twice
per round, once plain and once with moeless's expert-parallel blocks installed (4 CPU workers,
replicated hot experts, tokens water-filled at dispatch), alternating the order each round, and
prints tokens/s of both and their ratio, after checking the generated tokens are identical.
Uses the built-in `tiny-mixtral` when shipped, else a Mixtral-shaped model of the same size.

Part 2 times predict (the predictor's gate copy on the layer's router input, 256 tokens) + scale
and place (`moeless` policy's prepare: water-filling forecast, pre-warm decisions) + dispatch
(water-filling the true load over the warm replicas) for one layer of 64 experts on 8 workers, on a
new router input every step: every forecast is new, so the policy's memo of forecast splits never
hits here (the worst case; serve's own `online_step_ms` shows the mix a workload gives).

    .venv/bin/python benchmarks/serve_throughput.py [--model M] [--rounds 5] [--batch-size 8] [--workers 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def fallback_model(root: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "mixtral", hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, vocab_size=4096,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    path = root / "bench-mixtral"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def batches(vocab: int, count: int, size: int, max_len: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths = torch.randint(max_len // 2, max_len + 1, (size,), generator=gen)
        ids = torch.zeros((size, max_len), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths.tolist()):
            ids[row, max_len - n:] = torch.randint(3, vocab, (n,), generator=gen)
            mask[row, max_len - n:] = 1
        out.append((ids, mask))
    return out


def skewed_plan(num_layers: int, num_experts: int, workers: int):
    """Every expert once round-robin, plus a second replica of experts 0 and 1 on other workers."""
    from moeless_cli.planning.plan import LayerPlan, Plan

    expert = list(range(num_experts)) + [0, 1]
    gpu = [e % workers for e in range(num_experts)] + [1 % workers, 2 % workers]
    share = [1.0] * num_experts
    share[0] = share[1] = 0.5
    share += [0.5, 0.5]
    return Plan(workers, num_experts, [LayerPlan.from_lists(expert, gpu, share) for _ in range(num_layers)])


def with_plan_tables(policy, tile_tokens: int):
    """The fixed-plan policy offering its plan's replicas as per-layer tables: the runtime then
    splits on the device (serving/routing.py) instead of calling the policy's host `dispatch`."""
    from moeless_cli.planning.device_split import replica_table

    s = policy.setting
    tables = {layer: replica_table(plan.expert, plan.gpu, s.num_experts, s.num_gpus)
              for layer, plan in enumerate(policy.plans)}
    policy.device_table = tables.get
    s.tile_tokens = tile_tokens
    return policy


def throughput(args) -> None:
    from moeless_cli.models import load_moe_model
    from moeless_cli.online.fixed_plan import fixed_plan_policy
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    with tempfile.TemporaryDirectory() as tmp:
        try:
            loaded = load_moe_model(args.model)
        except Exception:  # not shipped in this install: same-size stand-in
            loaded = load_moe_model(fallback_model(Path(tmp)))
    vocab = int(loaded.model.config.vocab_size)
    work = batches(vocab, args.batches, args.batch_size, args.prompt_len)
    plan = skewed_plan(loaded.num_moe_layers, loaded.num_experts, args.workers)
    host = fixed_plan_policy(plan, balanced=True)  # moeless's dispatch over the plan's replicas, on the host
    device = with_plan_tables(fixed_plan_policy(plan, balanced=True), args.tile_tokens)
    runtimes = {"plain": None, **{name: ExpertParallelRuntime(loaded, make_local_workers(args.workers, ["cpu"]), p)
                                  for name, p in (("host", host), ("device", device))}}
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def run(runtime):
        if runtime is not None:
            runtime.install()
        start, outs = time.perf_counter(), []
        with torch.no_grad():
            for ids, mask in work:
                outs.append(loaded.model.generate(input_ids=ids, attention_mask=mask, **kwargs))
        seconds = time.perf_counter() - start
        if runtime is not None:
            runtime.uninstall()
        return seconds, outs

    torch.set_num_threads(args.threads)
    for runtime in runtimes.values():
        run(runtime)  # warm-up: one-time kernel set-up
    seconds = {name: [] for name in runtimes}
    names = list(runtimes)
    for r in range(args.rounds):
        outs = {}
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order each round
            spent, outs[name] = run(runtimes[name])
            seconds[name].append(spent)
        assert all(all(torch.equal(a, b) for a, b in zip(outs["plain"], outs[name])) for name in names[1:]), \
            "tokens differ from plain generate"
    tokens = args.batches * args.batch_size * args.new_tokens
    tps = {name: tokens / statistics.median(values) for name, values in seconds.items()}
    print(f"model {loaded.model_id}: {loaded.num_moe_layers} MoE layers x {loaded.num_experts} experts, top-{loaded.top_k}; "
          f"{args.batches} batches x {args.batch_size} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens; "
          f"{args.workers} CPU workers, {args.threads} torch thread(s), {args.rounds} rounds (median)")
    print("tokens identical to plain transformers: yes (host dispatch and device split)")
    print(f"plain transformers          : {tps['plain']:8.1f} tokens/s")
    for name, label in (("host", "host dispatch"), ("device", "device split ")):
        # each round's own ratio: the runs of one round are seconds apart, so the VM's slower drifts cancel
        paired = sorted(p / m for p, m in zip(seconds["plain"], seconds[name]))
        print(f"moeless local, {label}: {tps[name]:8.1f} tokens/s   ratio {tps[name] / tps['plain']:.3f}x  "
              f"(per round: median {statistics.median(paired):.3f}x, {paired[0]:.3f}-{paired[-1]:.3f}; target >= 0.90x)")
        layer_summary(runtimes[name].stats.layers)
        if runtimes[name].stats.split_modes:
            print("  device split calls by mode (chosen by measured layer time): "
                  + ", ".join(f"{m} {n}" for m, n in sorted(runtimes[name].stats.split_modes.items())))


def layer_summary(layers) -> None:
    worker = np.array([t.worker_s for t in layers])
    print(f"  per MoE layer (ms, mean): decide {np.mean([t.decide_s for t in layers]) * 1e3:.3f}, dispatch "
          f"{np.mean([t.dispatch_s for t in layers]) * 1e3:.3f}, slowest worker {worker.max(axis=1).mean() * 1e3:.3f}, "
          f"mean worker {worker.mean() * 1e3:.3f}, combine {np.mean([t.combine_s for t in layers]) * 1e3:.3f}, "
          f"reported layer time {np.mean([t.moe_s for t in layers]) * 1e3:.3f}")


def online_step(args) -> None:
    from moeless_cli.online.functions import FunctionPool
    from moeless_cli.online.policies import PolicySetting, make_policy
    from moeless_cli.planning.plan import balanced_slots_per_gpu
    from moeless_cli.predictor.store import LoadPredictor

    E, G, H, T, K, L = 64, 8, args.hidden, args.tokens, 8, 2
    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, E + 1) ** 1.1
    history = np.tile(zipf / zipf.sum() * T * K, (L, 1))
    manifest = {"num_experts": E, "top_k": K, "score": "softmax", "entries": [
        {"layer": 1, "distance": 1, "ema_alpha": 0.3, "blend_weight": 0.7, "count_mode": "soft"}]}
    tensors = {"moeless.d1.l1.weight": rng.normal(size=(E, H)).astype(np.float32),
               "moeless.d1.l1.calib_scale": np.array([1.0], dtype=np.float32),
               "moeless.d1.l1.calib_offset": np.zeros(E, dtype=np.float32)}
    predictor = LoadPredictor(manifest, tensors)
    setting = PolicySetting(num_layers=L, num_experts=E, num_gpus=G, slots_per_gpu=balanced_slots_per_gpu(E, G),
                            history=history)
    policy = make_policy("moeless", setting, FunctionPool(num_gpus=G, expert_bytes=2e6, keep_alive_s=60.0))
    base = torch.from_numpy(rng.normal(size=(T, H)).astype(np.float32))  # [T, H] router input
    drift = torch.from_numpy(rng.normal(size=(args.steps, H)).astype(np.float32))  # [steps, H] a topic per batch
    torch.set_num_threads(1)
    parts = {"predict": [], "scale+place": [], "dispatch": [], "device split": []}
    table = None
    for i in range(args.steps):
        now = i * 0.01
        # a new forecast every step (a repeated one would find its split remembered: the policy's memo)
        hidden = base + drift[i]  # [T, H]
        t0 = time.perf_counter()
        predicted = predictor.predict_layer_load(hidden, 1, 1, "moeless")
        t1 = time.perf_counter()
        policy.prepare(1, predicted, now)
        table = warm_table(policy.pool, 1, E, G, table)  # host code, when the warm set changes
        t2 = time.perf_counter()
        flat = torch.from_numpy(rng.choice(E, T * K, p=zipf / zipf.sum()))  # the gate's experts
        true = np.bincount(flat.numpy(), minlength=E)
        t3 = time.perf_counter()
        policy.dispatch(1, true, now)
        policy.observe(1, true)
        t4 = time.perf_counter()
        device_step(policy, table, flat, E, now)
        t5 = time.perf_counter()
        policy.end_iteration(now)
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t4 - t3, t5 - t4)):
            parts[key].append(dt * 1e3)
    searched = policy.dispatcher.forecast_searches
    print(f"online step, one layer, {E} experts on {G} workers, {T} tokens, hidden {H} (median over {args.steps}; "
          f"forecast splits searched, not remembered: {searched}):")
    for key, values in parts.items():
        print(f"  {key:12s} {statistics.median(values):.3f} ms")
    for label, split in (("host dispatch", parts["dispatch"]), ("device split", parts["device split"])):
        total = [a + b + c for a, b, c in zip(parts["predict"], parts["scale+place"], split)]
        print(f"  total, {label:13s} {statistics.median(total):.3f} ms (p99 {np.percentile(total, 99):.3f} ms; "
              f"target < 1 ms; on the critical path: its split, {statistics.median(split):.3f} ms)")


def warm_table(pool, layer: int, num_experts: int, num_gpus: int, cached):
    """The layer's warm replicas as a routing.DeviceTable on the CPU (`cached` while they are unchanged)."""
    from moeless_cli.planning.device_split import replica_table
    from moeless_cli.serving import routing

    expert, gpu = pool.layer_replicas(layer)
    return routing.device_table(replica_table(expert, gpu, num_experts, num_gpus), "cpu", cached)


def device_step(policy, table, flat, num_experts: int, now: float) -> None:
    """What serve's runtime does after the gate on the device path: counts -> quotas (the decision),
    then the policy's record of it (observe, invoke the used replicas)."""
    from moeless_cli.serving import routing

    started = time.perf_counter()
    counts = torch.bincount(flat, minlength=num_experts)
    split = routing.device_split(counts, flat, table, policy.setting.entry_tokens, 64, started)
    policy.observe(1, split.load)
    policy.pool.invoke(1, split.expert, split.gpu, now, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tile-tokens", type=int, default=64, help="the device split's GEMM tile (rows)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        throughput(args)
    online_step(args)


if __name__ == "__main__":
    main()
