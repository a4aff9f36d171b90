"""Train moeless's built-in MoE language models on CPU, with a fixed seed.

    .venv/bin/python scripts/train_builtin_models.py                     # both, as shipped (800 / 600 steps)
    .venv/bin/python scripts/train_builtin_models.py --models tiny-olmoe --steps 300 --out-dir /tmp/x

Each model is a real transformers architecture (MixtralForCausalLM, OlmoeForCausalLM), so the
loading code that serves real checkpoints serves these too. Output, per model:
src/moeless_cli/models/builtin/<name>/ = config.json, generation_config.json, model.safetensors
(bf16), tokenizer files, moeless-builtin.json (shape, size, held-out perplexity per domain).
The loss log (JSON) and curve (PNG) go to docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builtin_data import DOMAINS, load_domains  # noqa: E402
from builtin_eval import evaluate_heldout, unigram_perplexity  # noqa: E402
from builtin_tokenizer import MODEL_MAX_LENGTH, encode_stream, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO / "src" / "moeless_cli" / "models" / "builtin"
DEFAULT_LOG = REPO / "docs" / "models-training-log.json"
SCRIPT = "scripts/train_builtin_models.py"


@dataclass
class ModelSpec:
    """The shape of one built-in model."""

    architecture: str  # transformers class name
    experts: int  # routed experts per MoE layer
    top_k: int  # experts chosen per token
    expert_intermediate: int  # hidden width inside one expert's MLP
    layers: int = 6  # decoder layers, every one an MoE layer
    hidden: int = 128  # model width
    heads: int = 4  # attention heads (head_dim 32)
    default_steps: int = 800  # optimizer steps when --steps does not name this model
    # Router balancing loss: "pooled" is transformers' own (counts pooled over all layers, so one
    # layer may collapse onto one expert while another layer favours a different one);
    # "per-layer" applies the same Switch loss to each layer and averages, as Switch/OLMoE train.
    balance: str = "pooled"
    aux_coef: float | None = None  # router_aux_loss_coef; None keeps the architecture's default


SPECS = {
    # Mixtral-8x7B's routing shape: 8 experts, top-2
    "tiny-mixtral": ModelSpec("MixtralForCausalLM", experts=8, top_k=2, expert_intermediate=256,
                              balance="per-layer", aux_coef=0.01, default_steps=800),
    # OLMoE / Qwen3-MoE's fine-grained shape: 64 small experts, top-8
    "tiny-olmoe": ModelSpec("OlmoeForCausalLM", experts=64, top_k=8, expert_intermediate=64,
                            balance="per-layer", aux_coef=0.01, default_steps=600),
}


@dataclass
class TrainConfig:
    """Optimizer and batch settings shared by every model."""

    seed: int = 1234  # fixes tokenizer input order, init, batch sampling
    vocab_size: int = 4096  # BPE vocabulary, special tokens included
    batch_rows: int = 16  # sequences per step; row r draws from domain r % 4 (balanced)
    seq_len: int = 256  # tokens per sequence
    peak_lr: float = 2e-3  # AdamW peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to peak_lr * this
    warmup_steps: int = 40  # linear warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10  # steps between loss-log entries
    tokenizer_chars_per_domain: int = 1_500_000  # balanced sample the BPE is trained on


def build_model(spec: ModelSpec, vocab_size: int, tokenizer):
    """A randomly initialised model of `spec`, with the tokenizer's special ids inside the vocab."""
    from transformers import AutoModelForCausalLM, MixtralConfig, OlmoeConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        intermediate_size=spec.expert_intermediate,
        max_position_embeddings=MODEL_MAX_LENGTH,
        num_experts_per_tok=spec.top_k,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if spec.aux_coef is not None:
        common["router_aux_loss_coef"] = spec.aux_coef
    if spec.architecture == "MixtralForCausalLM":
        config = MixtralConfig(num_local_experts=spec.experts, **common)
    elif spec.architecture == "OlmoeForCausalLM":
        config = OlmoeConfig(num_experts=spec.experts, **common)
    else:
        raise ValueError(f"unknown architecture {spec.architecture}")
    # grouped_mm is fast on CPU; batched_mm is ~50x slower there (TOOLCHAIN.md). Not serialized.
    return AutoModelForCausalLM.from_config(config, experts_implementation="grouped_mm")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine from peak_lr to peak_lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.peak_lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.peak_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def sample_batch(streams: dict[str, np.ndarray], rng: np.random.Generator, cfg: TrainConfig) -> np.ndarray:
    """Domain-balanced batch: row r is a random window of domain r % len(DOMAINS).

    Returns: tokens [batch_rows, seq_len] int64.
    """
    rows = []
    for row in range(cfg.batch_rows):
        stream = streams[DOMAINS[row % len(DOMAINS)]]
        start = int(rng.integers(0, len(stream) - cfg.seq_len))
        rows.append(stream[start : start + cfg.seq_len])
    return np.stack(rows).astype(np.int64)


def train_one(name, spec, steps, tokenizer, streams, cfg, log, max_minutes, flush=lambda: None):
    """Train one model; appends {step, loss, lm_loss, aux_loss, lr, seconds} rows to `log`."""
    import torch
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(spec, cfg.vocab_size, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.peak_lr,
        betas=(0.9, 0.95),
    )
    aux_coef = model.config.router_aux_loss_coef
    started = time.time()
    done = 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        batch = torch.from_numpy(sample_batch(streams, rng, cfg))  # [rows, seq]
        out = model(input_ids=batch, labels=batch, output_router_logits=True)
        lm_loss = out.loss - aux_coef * out.aux_loss  # out.loss already holds the pooled router loss
        if spec.balance == "per-layer":
            aux_loss = torch.stack([
                load_balancing_loss_func((logits,), spec.experts, spec.top_k) for logits in out.router_logits
            ]).mean()
        else:
            aux_loss = out.aux_loss
        loss = lm_loss + aux_coef * aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if step % cfg.log_every == 0 or done == steps:
            aux = float(aux_loss.detach())
            row = dict(step=done, loss=float(loss.detach()), lm_loss=float(lm_loss.detach()),
                       aux_loss=aux, lr=group["lr"], seconds=round(time.time() - started, 1))
            log.append(row)
            flush()
            print(f"[{name}] step {done}/{steps} lm_loss {row['lm_loss']:.3f} aux {aux:.3f} "
                  f"lr {row['lr']:.2e} {row['seconds']:.0f}s", flush=True)
        if max_minutes and time.time() - started > max_minutes * 60:
            print(f"[{name}] stopping early at step {done}: --max-minutes {max_minutes} reached", flush=True)
            break
    model.eval()
    return model, done, time.time() - started


def save_model(name, spec, model, tokenizer, out_dir: Path, meta: dict) -> dict:
    """Write the HF checkpoint dir (bf16 safetensors + tokenizer) and moeless-builtin.json."""
    import torch
    from transformers import GenerationConfig

    from moeless_cli.fileio import atomic_directory, write_json_atomic

    params = sum(p.numel() for p in model.parameters())
    model.config.output_router_logits = False
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=32, do_sample=False,
    )
    with atomic_directory(out_dir / name) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        meta = dict(name=name, architecture=spec.architecture, layers=spec.layers, experts=spec.experts,
                    top_k=spec.top_k, hidden_size=spec.hidden, expert_intermediate_size=spec.expert_intermediate,
                    vocab_size=model.config.vocab_size, params=params, bytes=size, dtype="bfloat16",
                    domains=list(DOMAINS), **meta)
        write_json_atomic(tmp / "moeless-builtin.json", meta)
        tmp.chmod(0o755)  # temp dirs/files are private; shipped package data must be world-readable
        for f in tmp.iterdir():
            f.chmod(0o644)
    return meta


def parse_steps(text: str | None) -> dict[str, int]:
    """`800` (every model) or `tiny-mixtral=800,tiny-olmoe=700`."""
    if not text:
        return {name: spec.default_steps for name, spec in SPECS.items()}
    if text.isdigit():
        return {name: int(text) for name in SPECS}
    steps = {name: spec.default_steps for name, spec in SPECS.items()}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in SPECS or not value.isdigit():
            raise SystemExit(f"error: bad --steps entry {part!r}; use NAME=STEPS with NAME in {list(SPECS)}")
        steps[key] = int(value)
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the shared data dir")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where model dirs are written")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help="loss log JSON (PNG written beside it)")
    parser.add_argument("--models", default=",".join(SPECS), help="comma-separated subset of built-in names")
    parser.add_argument("--steps", default=None, help="N, or NAME=N,NAME=N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--max-minutes", type=float, default=0, help="per-model wall-clock cap (0: none)")
    parser.add_argument("--per-layer-balance", action="store_true",
                        help="force the per-layer router loss (coefficient 0.01) on every selected model")
    parser.add_argument("--eval-windows", type=int, default=48, help="held-out windows per domain")
    args = parser.parse_args(argv)

    import torch

    from moeless_cli.fileio import read_json, write_json_atomic

    torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}; choose from {list(SPECS)}")
    steps = parse_steps(args.steps)

    t0 = time.time()
    domains = load_domains(args.data_dir.resolve())
    tok_texts = []
    for name in DOMAINS:  # balanced tokenizer sample: the first N chars of each domain's train docs
        budget = cfg.tokenizer_chars_per_domain
        for doc in domains[name].train:
            if budget <= 0:
                break
            tok_texts.append(doc)
            budget -= len(doc)
    tokenizer = train_tokenizer(tok_texts, cfg.vocab_size)
    train_streams = {n: encode_stream(tokenizer, domains[n].train) for n in DOMAINS}
    heldout_streams = {n: encode_stream(tokenizer, domains[n].heldout) for n in DOMAINS}
    print("tokens per domain (train / heldout): " + ", ".join(
        f"{n} {len(train_streams[n])}/{len(heldout_streams[n])}" for n in DOMAINS) + f" [{time.time() - t0:.0f}s]",
        flush=True)
    unigram = unigram_perplexity(train_streams, heldout_streams, cfg.vocab_size, cfg.seq_len, args.eval_windows)

    log = read_json(args.log) if args.log.is_file() else {}
    log["config"] = vars(cfg)
    for name in names:
        spec = SPECS[name]
        if args.per_layer_balance:
            spec = dataclasses.replace(spec, balance="per-layer", aux_coef=0.01)
        rows: list[dict] = []
        log[name] = rows
        model, done, seconds = train_one(
            name, spec, steps[name], tokenizer, train_streams, cfg, rows, args.max_minutes,
            flush=lambda: write_json_atomic(args.log, log))
        write_json_atomic(args.log, log)
        heldout = evaluate_heldout(model, heldout_streams, cfg.seq_len, args.eval_windows)
        meta = dict(
            trained_steps=done, planned_steps=steps[name], tokens_seen=done * cfg.batch_rows * cfg.seq_len,
            train_seconds=round(seconds, 1), final_train_lm_loss=rows[-1]["lm_loss"],
            heldout_ppl=heldout, unigram_ppl=unigram["mix"], domain_unigram_ppl=unigram["domain"],
            train_tokens={n: int(len(train_streams[n])) for n in DOMAINS},
            heldout_tokens_evaluated=unigram["tokens"], sources={n: domains[n].sources for n in DOMAINS},
            router_balance={"kind": spec.balance, "coef": model.config.router_aux_loss_coef},
            seed=cfg.seed, script=SCRIPT, threads=args.threads,
        )
        meta = save_model(name, spec, model, tokenizer, args.out_dir, meta)
        print(f"[{name}] saved {meta['bytes'] / 1e6:.1f} MB; held-out ppl {heldout}; unigram {unigram['mix']}",
              flush=True)
        del model
    from plot_training_log import plot_log

    plot_log(args.log, args.log.with_suffix(".png"))
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
