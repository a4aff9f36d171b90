"""Fitting one predictor: a gate-shaped linear map from layer l's router input to layer l+d's routing.

Two recipes, both starting from a copy of the target layer's gate:
- `fit_paper`, the published layer-aware method: fine-tune the copy to reproduce the target gate's
  output (its score distribution) only when its top-k recall is below the threshold, and stop as
  soon as it passes;
- `fit_moeless`: always fine-tune, on the token's true top-k set, anchored to the gate copy,
  keeping the epoch with the best validation recall; then calibrate soft selection probabilities
  (a temperature and per-expert offsets) on per-expert BCE plus the batches' load distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from moeless_cli.predictor.gates import selection_margin
from moeless_cli.predictor.metrics import topk_recall



@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # upper bound on passes over the training tokens, per predictor
    batch_size: int = 256  # tokens per optimiser step (also the "batch" of the load loss)
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay (the gate init is the prior; no extra pull)
    accuracy_threshold: float = 0.8  # paper: fine-tune a layer only while its top-k recall is below this
    load_loss_weight: float = 2.0  # moeless calibration: weight of the batch load-distribution TVD next to the BCE
    anchor_weight: float = 0.3  # moeless: pull toward the gate copy (relative squared change); chosen on held-out domains when there are several
    distill_weight: float = 1.0  # moeless: weight of matching the target gate's own score distribution
    topk_weight: float = 0.0  # moeless: weight of the true top-k set's cross-entropy
    calibration_steps: int = 200  # moeless: full-batch Adam steps fitting the soft-count calibration
    seed: int = 0  # shuffling and initialisation


@dataclass
class LayerPair:
    """Training material for one (input layer l -> target layer l+d) predictor, as float32 tensors."""

    x_train: torch.Tensor  # [n_train, hidden] router inputs of layer l
    topk_train: torch.Tensor  # [n_train, k] experts layer l+d selected (int64)
    teacher_train: torch.Tensor  # [n_train, experts] layer l+d's own gate logits (its "output")
    x_val: torch.Tensor  # [n_val, hidden]
    topk_val: np.ndarray  # [n_val, k]
    train_batches: list[np.ndarray] = field(default_factory=list)  # indices into the train set, one per iteration


@dataclass
class GateCopy:
    """A gate-shaped predictor: logits = x @ weight.T + bias."""

    weight: np.ndarray  # [experts, hidden]
    bias: np.ndarray | None  # [experts] or None
    fine_tuned: bool = False  # whether any training step ran
    epochs_run: int = 0  # epochs actually run
    val_recall_before: float = float("nan")  # top-k recall on validation requests before training
    val_recall_after: float = float("nan")  # ... and after
    calib_scale: float = 1.0  # soft counts: P(selected) = sigmoid(calib_scale * margin + calib_offset),
    # margin = logit minus the token's top-k boundary (gates.selection_margin)
    calib_offset: np.ndarray | None = None  # [experts]; None: not calibrated (the paper's copies)
    top_k: int = 1  # experts per token (the margin's boundary)

    @property
    def num_parameters(self) -> int:
        return int(self.weight.size + (0 if self.bias is None else self.bias.size)
               + (0 if self.calib_offset is None else self.calib_offset.size + 1))

    def soft_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated P(expert selected) per token. x: [tokens, hidden] -> [tokens, experts]."""
        logits = x @ torch.from_numpy(self.weight).T
        if self.bias is not None:
            logits = logits + torch.from_numpy(self.bias)
        offset = 0.0 if self.calib_offset is None else torch.from_numpy(self.calib_offset)
        return torch.sigmoid(self.calib_scale * selection_margin(logits, self.top_k) + offset)


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
    route: Callable[[torch.Tensor], torch.Tensor],
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> GateCopy:
    """The published predictor for one target layer (layer-aware gate-copy fine-tuning).

    gate_weight: [experts, hidden], gate_bias: [experts] or None, of the target layer; route:
    the target router's top-k rule, logits [tokens, experts] -> ids [tokens, k].
    """
    layer = _linear(gate_weight, gate_bias, gate_bias is not None)

    def val_recall() -> float:
        with torch.no_grad():
            ids = route(layer(pair.x_val))
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


def _val_recall(layer: torch.nn.Linear, pair: LayerPair, route: Callable[[torch.Tensor], torch.Tensor]) -> float:
    with torch.no_grad():
        ids = route(layer(pair.x_val))
    return topk_recall(ids.numpy(), pair.topk_val)


def calibrate(
    margins: torch.Tensor, multi_hot: torch.Tensor, batches: list[np.ndarray], load_loss_weight: float, steps: int
) -> tuple[float, np.ndarray]:
    """Fit sigmoid(scale * margin + offset) to the top-k selection, for soft load counts.

    margins: [tokens, experts] a trained predictor's logits minus each token's top-k boundary
    (gates.selection_margin); multi_hot: [tokens, experts] the true top-k
    sets; batches: token indices of each iteration. Minimises per-expert BCE plus the mean TVD of
    each batch's soft load fractions. Returns (scale, offset [experts]). E + 1 numbers, full batch.
    """
    num_experts = margins.shape[1]
    log_scale = torch.zeros((), requires_grad=True)
    offset = torch.zeros(num_experts, requires_grad=True)  # margin 0 is the boundary: p = 0.5
    membership = torch.zeros(len(batches), margins.shape[0])  # [batches, tokens] which batch each token ran in
    for b, idx in enumerate(batches):
        membership[b, torch.from_numpy(idx)] = 1.0
    true_counts = membership @ multi_hot  # [batches, experts]
    true_frac = true_counts / true_counts.sum(dim=1, keepdim=True).clamp_min(1e-9)
    optimiser = torch.optim.Adam([log_scale, offset], lr=0.05)
    for _ in range(steps):
        z = torch.exp(log_scale) * margins + offset  # [tokens, experts]
        bce = F.binary_cross_entropy_with_logits(z, multi_hot)
        soft = membership @ torch.sigmoid(z)  # [batches, experts]
        tvd = 0.5 * (soft / soft.sum(dim=1, keepdim=True).clamp_min(1e-9) - true_frac).abs().sum(dim=1).mean()
        loss = bce + (load_loss_weight * tvd if len(batches) else 0.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return float(torch.exp(log_scale.detach())), offset.detach().numpy().copy()


def fit_moeless(
    pair: LayerPair,
    gate_weight: np.ndarray,
    gate_bias: np.ndarray | None,
    top_k: int,
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
    route: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GateCopy:
    """The moeless predictor for one target layer: every layer trained, then calibrated.

    gate_weight: [experts, hidden], gate_bias: [experts] or None, of the target layer; route: the
    target router's top-k rule on logits (default: plain top-k), which the copy keeps using.
    1. Ranking: fine-tune the gate copy on the true top-k set (softmax cross-entropy of the set,
       as routers are trained) with a pull toward the target gate's weights, keeping the epoch
       with the best validation recall (the untouched copy included).
    2. Calibration: sigmoid(scale * logits + offset) fitted to selection and batch load shares,
       which turns the ranking into soft per-expert counts for load prediction.
    """
    num_experts = gate_weight.shape[0]
    if route is None:
        route = lambda logits: torch.topk(logits, top_k, dim=-1).indices  # noqa: E731
    layer = _linear(gate_weight, gate_bias, gate_bias is not None)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    multi_hot = torch.zeros(pair.x_train.shape[0], num_experts)
    multi_hot.scatter_(1, pair.topk_train, 1.0)  # [n_train, experts] the true top-k sets
    anchor = layer.weight.detach().clone()  # [experts, hidden] the target gate: the prior
    anchor_norm = float((anchor * anchor).sum()) + 1e-12
    teacher = torch.softmax(pair.teacher_train, dim=-1)  # [n_train, experts] what the target gate itself scores
    optimiser = torch.optim.AdamW(layer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    recall_before = _val_recall(layer, pair, route)
    best = (recall_before, *_copy_out(layer))
    epochs_run = 0
    for epoch in range(config.epochs):
        for idx in _minibatches(pair.x_train.shape[0], config.batch_size, generator):
            log_probs = torch.log_softmax(layer(pair.x_train[idx]), dim=-1)  # [batch, experts]
            ranking = -config.topk_weight * (log_probs * multi_hot[idx]).sum(dim=-1).mean() / top_k
            if config.distill_weight:
                ranking = ranking - config.distill_weight * (log_probs * teacher[idx]).sum(dim=-1).mean()
            drift = ((layer.weight - anchor) ** 2).sum() / anchor_norm
            loss = ranking + config.anchor_weight * drift
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch()
        recall = _val_recall(layer, pair, route)
        if recall > best[0]:
            best = (recall, *_copy_out(layer))
    recall, weight, bias = best
    with torch.no_grad():
        logits = pair.x_train @ torch.from_numpy(weight).T + (0.0 if bias is None else torch.from_numpy(bias))
    margins = selection_margin(logits, top_k)  # [n_train, experts]
    scale, offset = calibrate(margins, multi_hot, pair.train_batches, config.load_loss_weight, config.calibration_steps)
    return GateCopy(weight, bias, epochs_run > 0, epochs_run, recall_before, recall, scale, offset, top_k)
