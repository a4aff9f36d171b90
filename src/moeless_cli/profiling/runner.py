"""Run prefill + greedy decode over a prompt set in batches, recording with RoutingRecorder."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from moeless_cli.errors import MoelessError
from moeless_cli.models import LoadedModel
from moeless_cli.profiling.recorder import RoutingRecorder
from moeless_cli.workloads.prompts import PromptSet, render_prompt


@dataclass
class ProfileOptions:
    num_prompts: int = 32  # prompts taken from the dataset (a seeded random subset)
    batch_size: int = 8  # prompts per prefill batch; each batch then decodes together
    max_new_tokens: int = 8  # greedy decode forward passes after each prefill
    max_prompt_tokens: int = 128  # longer prompts keep their last tokens (the chat template's tail)
    router_samples: int = 4096  # tokens whose router inputs are kept (fp16, every MoE layer)
    seed: int = 0  # prompt subset/order and the router-input sample

    def validate(self) -> None:
        from moeless_cli.checks import MAX_COUNT, MAX_TOKENS, integer, seed

        for name, low, high in (("num_prompts", 1, MAX_COUNT), ("batch_size", 1, 1 << 16),
                                ("max_prompt_tokens", 1, MAX_TOKENS), ("max_new_tokens", 0, MAX_TOKENS),
                                ("router_samples", 0, MAX_COUNT)):
            integer(f"--{name.replace('_', '-')}", getattr(self, name), low, high)
        seed("--seed", self.seed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    request_ids: list[int]  # global request index of each row
    input_ids: torch.Tensor  # [batch, seq] left-padded
    attention_mask: torch.Tensor  # [batch, seq] 1 for prompt tokens


@dataclass
class Trace:
    """Per-pass and per-token bookkeeping kept by the generation loop (the recorder keeps routing)."""

    iteration_phase: list[int] = field(default_factory=list)
    iteration_batch: list[int] = field(default_factory=list)
    iteration_tokens: list[int] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    token_request: list[np.ndarray] = field(default_factory=list)
    token_position: list[np.ndarray] = field(default_factory=list)
    token_ids: list[np.ndarray] = field(default_factory=list)
    token_phase: list[np.ndarray] = field(default_factory=list)
    token_iteration: list[np.ndarray] = field(default_factory=list)


def tokenize_batches(loaded: LoadedModel, prompts: PromptSet, options: ProfileOptions) -> list[Batch]:
    """Render (chat template where it applies), tokenize, truncate and left-pad into batches."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise MoelessError(f"model {loaded.model_id} ships no tokenizer; moeless profile needs one to encode prompts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded: list[list[int]] = []
    for prompt in prompts.prompts:
        templated = prompt.chat and bool(getattr(tokenizer, "chat_template", None))
        ids = tokenizer(render_prompt(prompt, tokenizer), add_special_tokens=not templated)["input_ids"]
        ids = [int(i) for i in ids][-options.max_prompt_tokens:] or [pad_id]
        encoded.append(ids)
    batches = []
    for start in range(0, len(encoded), options.batch_size):
        rows = encoded[start:start + options.batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        batches.append(Batch(list(range(start, start + len(rows))), input_ids, mask))
    return batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model: Any, recorder: RoutingRecorder | None, valid: torch.Tensor, **inputs: Any) -> tuple[Any, float]:
    """One forward pass, timed end to end (hook work and the recorder's folding included)."""
    device = inputs["input_ids"].device
    _synchronize(device)
    start = time.perf_counter()
    if recorder is not None:
        recorder.begin_forward(valid)
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    if recorder is not None:
        recorder.end_forward()
    _synchronize(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def generate(loaded: LoadedModel, batches: list[Batch], max_new_tokens: int, recorder: RoutingRecorder | None,
             on_pass: Callable[[], None] | None = None) -> Trace:
    """Prefill each batch, then up to `max_new_tokens` greedy decode passes with the KV cache.

    A row that produced EOS stops: later passes feed it a masked pad token and record nothing for it.
    """
    model, device = loaded.model, next(loaded.model.parameters()).device
    eos = loaded.tokenizer.eos_token_id if loaded.tokenizer is not None else None
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer is not None else 0
    trace = Trace()
    for b, batch in enumerate(batches):
        input_ids = batch.input_ids.to(device)  # [batch, seq]
        mask = batch.attention_mask.to(device)  # [batch, seq]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, seq] left padding shifts positions
        requests = torch.tensor(batch.request_ids)
        alive = torch.ones(len(batch.request_ids), dtype=torch.bool, device=device)  # [batch]
        valid = mask.bool()
        cache = None
        for step in range(max_new_tokens + 1):
            phase = 0 if step == 0 else 1
            out, seconds = _forward(model, recorder, valid, input_ids=input_ids, attention_mask=mask,
                                    position_ids=positions, cache=cache)
            _note_pass(trace, len(trace.iteration_phase), phase, b, seconds, valid, requests, positions, input_ids)
            if on_pass is not None:
                on_pass()
            cache = out.cache
            next_ids = out.logits[:, -1].argmax(-1)  # [batch] greedy
            if eos is not None:
                alive = alive & (next_ids != eos)
            if step == max_new_tokens or not bool(alive.any()):
                break
            input_ids = torch.where(alive, next_ids, torch.full_like(next_ids, pad))[:, None]  # [batch, 1]
            positions = positions[:, -1:] + 1  # [batch, 1]
            mask = torch.cat([mask, alive[:, None].long()], dim=1)  # [batch, seq + 1]
            valid = alive[:, None]  # [batch, 1]
    return trace


def _note_pass(trace: Trace, iteration: int, phase: int, batch: int, seconds: float, valid: torch.Tensor,
               requests: torch.Tensor, positions: torch.Tensor, input_ids: torch.Tensor) -> None:
    valid_cpu = valid.cpu()  # [batch, seq]
    rows = valid_cpu.nonzero()[:, 0]  # row of each valid token, row-major order like the recorder
    count = int(valid_cpu.sum())
    trace.iteration_phase.append(phase)
    trace.iteration_batch.append(batch)
    trace.iteration_tokens.append(count)
    trace.iteration_seconds.append(seconds)
    trace.token_request.append(requests[rows].numpy().astype(np.int32))
    trace.token_position.append(positions.cpu()[valid_cpu].numpy().astype(np.int32))
    trace.token_ids.append(input_ids.cpu()[valid_cpu].numpy().astype(np.int32))
    trace.token_phase.append(np.full(count, phase, np.uint8))
    trace.token_iteration.append(np.full(count, iteration, np.int32))


def count_passes(batches: list[Batch], max_new_tokens: int) -> int:
    """Upper bound on forward passes (rows that all stop early end a batch sooner)."""
    return len(batches) * (max_new_tokens + 1)
