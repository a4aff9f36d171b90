"""How much do moeless's routing hooks add to a forward pass? (target: at most 10%)

Runs the same prompt batches (prefill + greedy decode with KV cache) through the same model twice
per round, once plain and once with the RoutingRecorder attached (top-k ids, load, router-input
reservoir), alternating the order each round, and prints the ratio of summed forward-pass times.
Uses the built-in `tiny-mixtral` when shipped, else a Mixtral-shaped model built here
(hidden 128, 4 layers, 8 experts, top-2: the built-in models' size).

    .venv/bin/python benchmarks/profile_overhead.py [--model M] [--rounds 5] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_fallback_model(root: Path, hidden: int = 128, layers: int = 4, experts: int = 8, top_k: int = 2) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "mixtral", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=experts, num_experts_per_tok=top_k, vocab_size=4096,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    path = root / "bench-mixtral"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def random_batches(vocab: int, num_batches: int, batch_size: int, max_len: int, seed: int):
    """Left-padded batches of random token ids with varied prompt lengths (no tokenizer needed)."""
    from moeless_cli.profiling.runner import Batch

    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(num_batches):
        lengths = torch.randint(max_len // 4, max_len + 1, (batch_size,), generator=gen)
        ids = torch.zeros(batch_size, max_len, dtype=torch.long)
        mask = torch.zeros(batch_size, max_len, dtype=torch.long)
        for i, n in enumerate(lengths.tolist()):
            ids[i, max_len - n:] = torch.randint(3, vocab, (n,), generator=gen)
            mask[i, max_len - n:] = 1
        batches.append(Batch(list(range(b * batch_size, (b + 1) * batch_size)), ids, mask))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir or built-in name (default tiny-mixtral)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--router-samples", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: tiny models gain nothing from more, and one thread "
                             "lets the loop's CPU time be measured undisturbed); 0 = torch's choice")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=None,
                        help="build a Mixtral-shaped model of this width instead (with --layers/--experts/--top-k)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from moeless_cli.models import builtin_names, load_moe_model
    from moeless_cli.profiling.recorder import RoutingRecorder
    from moeless_cli.profiling.runner import generate

    with tempfile.TemporaryDirectory() as tmp:
        if args.hidden:
            model = str(build_fallback_model(Path(tmp), args.hidden, args.layers, args.experts, args.top_k))
        else:
            model = args.model or ("tiny-mixtral" if "tiny-mixtral" in builtin_names()
                                   else str(build_fallback_model(Path(tmp))))
        loaded = load_moe_model(model, device=args.device)
        vocab = loaded.model.config.vocab_size
        batches = random_batches(vocab, args.batches, args.batch_size, args.prompt_tokens, seed=0)
        generate(loaded, batches[:1], 1, None)  # warm-up: allocator, kernels
        plain_s, profiled_s = [], []
        plain_passes, profiled_passes = [], []  # per run: [passes] seconds
        cpu = {False: [], True: []}  # this thread's CPU seconds per run: immune to other processes
        for r in range(args.rounds):
            for profiled in ((False, True) if r % 2 == 0 else (True, False)):
                cpu_start = time.thread_time()
                if profiled:
                    with RoutingRecorder(loaded, args.router_samples, seed=r) as recorder:
                        trace = generate(loaded, batches, args.new_tokens, recorder)
                    profiled_s.append(sum(trace.iteration_seconds))
                    profiled_passes.append(trace.iteration_seconds)
                    cpu[True].append(time.thread_time() - cpu_start)
                else:
                    trace = generate(loaded, batches, args.new_tokens, None)
                    plain_s.append(sum(trace.iteration_seconds))
                    plain_passes.append(trace.iteration_seconds)
                    cpu[False].append(time.thread_time() - cpu_start)
        passes = len(trace.iteration_seconds)

    ratios = [p / q for p, q in zip(profiled_s, plain_s)]
    # Robust to another process stealing the CPU mid-run: each pass's median over rounds, summed.
    plain_robust = sum(statistics.median(run[i] for run in plain_passes) for i in range(len(plain_passes[0])))
    profiled_robust = sum(statistics.median(run[i] for run in profiled_passes) for i in range(len(profiled_passes[0])))
    print(f"model: {model} ({loaded.family}, {loaded.num_moe_layers} MoE layers x {loaded.num_experts} experts, "
          f"top-{loaded.top_k}, hidden {loaded.hidden_size}); device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"workload: {args.batches} batches x {args.batch_size} prompts (<= {args.prompt_tokens} tokens) + "
          f"{args.new_tokens} decode steps = {passes} forward passes per run; {args.rounds} rounds, order alternating")
    print(f"plain forward    median {statistics.median(plain_s) * 1e3:9.1f} ms per run  "
          f"(min {min(plain_s) * 1e3:.1f})")
    print(f"profiled forward median {statistics.median(profiled_s) * 1e3:9.1f} ms per run  "
          f"(min {min(profiled_s) * 1e3:.1f})")
    print(f"overhead ratio (profiled / plain): median {statistics.median(ratios):.3f}, "
          f"min-vs-min {min(profiled_s) / min(plain_s):.3f}")
    print(f"per-pass medians summed: plain {plain_robust * 1e3:.1f} ms, profiled {profiled_robust * 1e3:.1f} ms, "
          f"ratio {profiled_robust / plain_robust:.3f}")
    if torch.get_num_threads() == 1 and args.device == "cpu":
        plain_cpu, profiled_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
        print(f"CPU time of the generation loop (1 thread, not disturbed by other processes): plain "
              f"{plain_cpu * 1e3:.1f} ms, profiled {profiled_cpu * 1e3:.1f} ms, ratio {profiled_cpu / plain_cpu:.3f}")
    print("target: profiled / plain <= 1.10")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"benchmark wall time {time.perf_counter() - t0:.1f} s")
