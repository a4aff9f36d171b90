"""Fitting one predictor: a gate-shaped linear map from layer l's router input to layer l+d's routing.

Two recipes, both starting from a copy of the target layer's gate:
- `fit_paper`, the published layer-aware method: fine-tune the copy to reproduce the target gate's
  output (its score distribution) only when its top-k recall is below the threshold, and stop as
  soon as it passes;
- `fit_moeless`: always fine-tune, with a loss on the token's true top-k set (per-expert binary
  cross-entropy, so sigmoid(logit) is a calibrated probability of being selected) plus a loss on the
  batch's load distribution; keep the epoch that scores best on validation requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from moeless_cli.predictor.gates import select_topk
from moeless_cli.predictor.metrics import topk_recall


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # upper bound on passes over the training tokens, per predictor
    batch_size: int = 256  # tokens per optimiser step (also the "batch" of the load loss)
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay (the gate init is the prior; no extra pull)
    accuracy_threshold: float = 0.8  # paper: fine-tune a layer only while its top-k recall is below this
    load_loss_weight: float = 2.0  # moeless: weight of the batch load-distribution TVD next to the BCE
    seed: int = 0  # shuffling and initialisation


@dataclass
class LayerPair:
    """Training material for one (input layer l -> target layer l+d) predictor, as float32 tensors."""

    x_train: torch.Tensor  # [n_train, hidden] router inputs of layer l
    topk_train: torch.Tensor  # [n_train, k] experts layer l+d selected (int64)
    teacher_train: torch.Tensor  # [n_train, experts] layer l+d's own gate logits (its "output")
    x_val: torch.Tensor  # [n_val, hidden]
    topk_val: np.ndarray  # [n_val, k]
    val_batches: list[np.ndarray] = field(default_factory=list)  # indices into the val set, one per iteration


@dataclass
class GateCopy:
    """A gate-shaped predictor: logits = x @ weight.T + bias."""

    weight: np.ndarray  # [experts, hidden]
    bias: np.ndarray | None  # [experts] or None
    fine_tuned: bool = False  # whether any training step ran
    epochs_run: int = 0  # epochs actually run
    val_recall_before: float = float("nan")  # top-k recall on validation requests before training
    val_recall_after: float = float("nan")  # ... and after

    @property
    def num_parameters(self) -> int:
        return int(self.weight.size + (0 if self.bias is None else self.bias.size))


def _linear(weight: np.ndarray, bias: np.ndarray | None, requires_bias: bool) -> torch.nn.Linear:
    experts, hidden = weight.shape
    layer = torch.nn.Linear(hidden, experts, bias=requires_bias)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        if requires_bias:
            layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)) if bias is not None else 0.0)
    return layer


def _minibatches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _copy_out(layer: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray | None]:
    weight = layer.weight.detach().numpy().copy()
    bias = None if layer.bias is None else layer.bias.detach().numpy().copy()
    return weight, bias


def fit_paper(
    pair: LayerPair,
    gate_weight: np.ndarray,
    gate_bias: np.ndarray | None,
    correction: np.ndarray | None,
    score: str,
    top_k: int,
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> GateCopy:
    """The published predictor for one target layer (layer-aware gate-copy fine-tuning).

    gate_weight: [experts, hidden], gate_bias / correction: [experts] or None, of the target layer.
    """
    layer = _linear(gate_weight, gate_bias, gate_bias is not None)
    corr = None if correction is None else torch.from_numpy(np.asarray(correction, dtype=np.float32))

    def val_recall() -> float:
        with torch.no_grad():
            ids = select_topk(layer(pair.x_val), top_k, score, corr)
        return topk_recall(ids.numpy(), pair.topk_val)

    before = val_recall()
    result = GateCopy(*_copy_out(layer), val_recall_before=before, val_recall_after=before)
    if before >= config.accuracy_threshold or pair.x_train.shape[0] == 0:
        return result
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(layer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    target = torch.softmax(pair.teacher_train, dim=-1)  # [n_train, experts] the gate's output distribution
    recall = before
    for epoch in range(config.epochs):
        for idx in _minibatches(pair.x_train.shape[0], config.batch_size, generator):
            loss = F.cross_entropy(layer(pair.x_train[idx]), target[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if on_epoch is not None:
            on_epoch()
        recall = val_recall()
        result.epochs_run = epoch + 1
        if recall >= config.accuracy_threshold:
            break
    weight, bias = _copy_out(layer)
    return GateCopy(weight, bias, True, result.epochs_run, before, recall)


def soft_counts(logits: torch.Tensor) -> torch.Tensor:
    """Expected tokens per expert: sum over tokens of P(selected) = sigmoid(logit). [tokens, experts] -> [experts]."""
    return torch.sigmoid(logits).sum(dim=0)


def _val_score(layer: torch.nn.Linear, pair: LayerPair, top_k: int, num_experts: int) -> tuple[float, float]:
    """(top-k recall, mean batch TVD of soft loads) on the validation requests."""
    with torch.no_grad():
        logits = layer(pair.x_val)  # [n_val, experts]
    recall = topk_recall(torch.topk(logits, top_k, dim=-1).indices.numpy(), pair.topk_val)
    probs = torch.sigmoid(logits).numpy()
    tvds = []
    for idx in pair.val_batches:
        pred = probs[idx].sum(axis=0)
        true = np.bincount(pair.topk_val[idx].reshape(-1), minlength=num_experts).astype(np.float64)
        tvds.append(0.5 * np.abs(pred / max(pred.sum(), 1e-12) - true / max(true.sum(), 1e-12)).sum())
    return recall, float(np.mean(tvds)) if tvds else 0.0


def fit_moeless(
    pair: LayerPair,
    gate_weight: np.ndarray,
    gate_bias: np.ndarray | None,
    top_k: int,
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> GateCopy:
    """The moeless predictor for one target layer: gate copy + bias, top-k BCE + batch-load loss.

    gate_weight: [experts, hidden], gate_bias: [experts] or None, of the target layer. Keeps the
    epoch with the best validation (recall - load TVD), the untouched copy included.
    """
    num_experts = gate_weight.shape[0]
    layer = _linear(gate_weight, gate_bias, True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    multi_hot = torch.zeros(pair.x_train.shape[0], num_experts)
    multi_hot.scatter_(1, pair.topk_train, 1.0)  # [n_train, experts] the true top-k sets
    with torch.no_grad():  # start the bias at the experts' log-odds of selection so BCE starts calibrated
        rate = multi_hot.mean(dim=0).clamp(1e-3, 1 - 1e-3)
        raw = pair.x_train @ layer.weight.T  # [n_train, experts]
        layer.bias.copy_(torch.log(rate / (1 - rate)) - raw.mean(dim=0))
    optimiser = torch.optim.AdamW(layer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    recall, tvd = _val_score(layer, pair, top_k, num_experts)
    best = (recall - tvd, *_copy_out(layer), recall)
    recall_before = recall
    epochs_run = 0
    for epoch in range(config.epochs):
        for idx in _minibatches(pair.x_train.shape[0], config.batch_size, generator):
            logits = layer(pair.x_train[idx])  # [batch, experts]
            target = multi_hot[idx]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / idx.numel()
            pred_frac = torch.sigmoid(logits).sum(0) / torch.sigmoid(logits).sum()
            true_frac = target.sum(0) / target.sum()
            loss = bce + config.load_loss_weight * 0.5 * (pred_frac - true_frac).abs().sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch()
        recall, tvd = _val_score(layer, pair, top_k, num_experts)
        if recall - tvd > best[0]:
            best = (recall - tvd, *_copy_out(layer), recall)
    return GateCopy(best[1], best[2], epochs_run > 0, epochs_run, recall_before, best[3])
