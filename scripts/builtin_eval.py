"""Held-out perplexity of a built-in model per domain, and the unigram baselines beside it.

Both are measured on the same tokens: the first `windows` non-overlapping windows of each
domain's held-out stream, every position but the first of a window being predicted.
"""

from __future__ import annotations

import math

import numpy as np


def heldout_windows(stream: np.ndarray, seq_len: int, windows: int) -> np.ndarray:
    """Non-overlapping windows from the start of `stream`.

    stream: [n_tokens]. Returns: [min(windows, n_tokens // seq_len), seq_len] int64.
    """
    count = min(windows, len(stream) // seq_len)
    return stream[: count * seq_len].reshape(count, seq_len).astype(np.int64)


def evaluate_heldout(model, heldout: dict[str, np.ndarray], seq_len: int, windows: int, batch: int = 8) -> dict:
    """Perplexity (exp of mean next-token NLL, router loss excluded) per domain, rounded to 0.01."""
    import torch

    result = {}
    with torch.no_grad():
        for domain, stream in heldout.items():
            tokens = torch.from_numpy(heldout_windows(stream, seq_len, windows))  # [w, seq]
            total_nll, total_count = 0.0, 0
            for start in range(0, len(tokens), batch):
                chunk = tokens[start : start + batch]  # [b, seq]
                logits = model(input_ids=chunk).logits.float()  # [b, seq, vocab]
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
                )
                total_nll += float(nll)
                total_count += chunk[:, 1:].numel()
            result[domain] = round(math.exp(total_nll / total_count), 2)
    return result


def _unigram_ppl(counts: np.ndarray, targets: np.ndarray) -> float:
    """Add-one-smoothed unigram perplexity. counts: [vocab]; targets: [n] token ids."""
    probs = (counts + 1.0) / (counts.sum() + len(counts))  # [vocab]
    return round(float(np.exp(-np.log(probs[targets]).mean())), 2)


def unigram_perplexity(train: dict[str, np.ndarray], heldout: dict[str, np.ndarray], vocab: int,
                       seq_len: int, windows: int) -> dict:
    """Unigram baselines on the model's evaluation tokens.

    mix: counts from the whole balanced training mix (what the model saw);
    domain: counts from that domain's own training text (a stronger baseline).
    """
    mix_counts = np.zeros(vocab)
    domain_counts = {}
    for domain, stream in train.items():
        counts = np.bincount(stream, minlength=vocab).astype(np.float64)
        domain_counts[domain] = counts
        mix_counts += counts / max(1, counts.sum())  # balanced: each domain weighs the same
    mix_counts *= 1e6  # back to pseudo-counts so add-one smoothing stays small
    out = {"mix": {}, "domain": {}, "tokens": {}}
    for domain, stream in heldout.items():
        targets = heldout_windows(stream, seq_len, windows)[:, 1:].reshape(-1)  # [n]
        out["mix"][domain] = _unigram_ppl(mix_counts, targets)
        out["domain"][domain] = _unigram_ppl(domain_counts[domain], targets)
        out["tokens"][domain] = int(targets.size)
    return out
