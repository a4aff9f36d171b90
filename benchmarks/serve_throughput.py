"""serve's local backend vs plain transformers, side by side in one run (target: >= 0.85x tokens/s,
identical tokens), and the online step of one layer (target: < 1 ms for 64 experts on 8 workers).

Part 1 runs the same left-padded prompt batches through `model.generate` (greedy, KV cache) twice
per round, once plain and once with moeless's expert-parallel blocks installed (4 CPU workers,
replicated hot experts, tokens water-filled at dispatch), alternating the order each round, and
prints tokens/s of both and their ratio, after checking the generated tokens are identical.
Uses the built-in `tiny-mixtral` when shipped, else a Mixtral-shaped model of the same size.

Part 2 times predict (the predictor's gate copy on the layer's router input, 256 tokens) + scale
and place (`moeless` policy's prepare: water-filling forecast, pre-warm decisions) + dispatch
(water-filling the true load over the warm replicas) for one layer of 64 experts on 8 workers.

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
    policy = fixed_plan_policy(plan, balanced=True)  # moeless's dispatch over the plan's replicas
    runtime = ExpertParallelRuntime(loaded, make_local_workers(args.workers, ["cpu"]), policy)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def run(expert_parallel: bool):
        if expert_parallel:
            runtime.install()
        start, outs = time.perf_counter(), []
        with torch.no_grad():
            for ids, mask in work:
                outs.append(loaded.model.generate(input_ids=ids, attention_mask=mask, **kwargs))
        seconds = time.perf_counter() - start
        if expert_parallel:
            runtime.uninstall()
        return seconds, outs

    torch.set_num_threads(args.threads)
    run(False), run(True)  # warm-up: one-time kernel set-up
    plain_s, ep_s = [], []
    for r in range(args.rounds):
        for ep in ((False, True) if r % 2 == 0 else (True, False)):
            seconds, outs = run(ep)
            (ep_s if ep else plain_s).append(seconds)
            if ep:
                ep_outs = outs
            else:
                plain_outs = outs
        assert all(torch.equal(a, b) for a, b in zip(plain_outs, ep_outs)), "tokens differ from plain generate"
    tokens = args.batches * args.batch_size * args.new_tokens
    plain_tps, ep_tps = tokens / statistics.median(plain_s), tokens / statistics.median(ep_s)
    layers = runtime.stats.layers
    print(f"model {loaded.model_id}: {loaded.num_moe_layers} MoE layers x {loaded.num_experts} experts, top-{loaded.top_k}; "
          f"{args.batches} batches x {args.batch_size} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens; "
          f"{args.workers} CPU workers, {args.threads} torch thread(s), {args.rounds} rounds (median)")
    print("tokens identical to plain transformers: yes")
    print(f"plain transformers : {plain_tps:8.1f} tokens/s")
    print(f"moeless local      : {ep_tps:8.1f} tokens/s")
    print(f"ratio              : {ep_tps / plain_tps:.3f}x  (target >= 0.85x)")
    worker = np.array([t.worker_s for t in layers])
    print(f"per MoE layer (ms, mean): dispatch {np.mean([t.dispatch_s for t in layers]) * 1e3:.3f}, "
          f"slowest worker {worker.max(axis=1).mean() * 1e3:.3f}, mean worker {worker.mean() * 1e3:.3f}, "
          f"combine {np.mean([t.combine_s for t in layers]) * 1e3:.3f}, reported layer time "
          f"{np.mean([t.moe_s for t in layers]) * 1e3:.3f}")


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
    hidden = torch.from_numpy(rng.normal(size=(T, H)).astype(np.float32))
    torch.set_num_threads(1)
    parts = {"predict": [], "scale+place": [], "dispatch": []}
    for i in range(args.steps):
        now = i * 0.01
        t0 = time.perf_counter()
        predicted = predictor.predict_layer_load(hidden, 1, 1, "moeless")
        t1 = time.perf_counter()
        policy.prepare(1, predicted, now)
        t2 = time.perf_counter()
        true = rng.multinomial(T * K, zipf / zipf.sum()).astype(np.float64)
        t3 = time.perf_counter()
        policy.dispatch(1, true, now)
        policy.observe(1, true)
        t4 = time.perf_counter()
        policy.end_iteration(now)
        for key, dt in (("predict", t1 - t0), ("scale+place", t2 - t1), ("dispatch", t4 - t3)):
            parts[key].append(dt * 1e3)
    total = [a + b + c for a, b, c in zip(*parts.values())]
    print(f"online step, one layer, {E} experts on {G} workers, {T} tokens, hidden {H} (median over {args.steps}):")
    for key, values in parts.items():
        print(f"  {key:12s} {statistics.median(values):.3f} ms")
    print(f"  total        {statistics.median(total):.3f} ms (p99 {np.percentile(total, 99):.3f} ms; target < 1 ms)")


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
