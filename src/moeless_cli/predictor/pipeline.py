"""Train every (target layer, distance) predictor and score it against the baselines."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from moeless_cli.errors import MoelessError
from moeless_cli.predictor.evaluate import (
    Blend,
    batch_counts,
    batch_sums,
    blended_loads,
    choose_alpha,
    choose_blend,
    score_layer,
    summarise,
)
from moeless_cli.predictor.gates import GateBank, select_topk
from moeless_cli.predictor.history import ema_prior
from moeless_cli.predictor.samples import MIN_BATCH_TOKENS, RoutingSamples, iteration_batches, split_by_request
from moeless_cli.predictor.train import GateCopy, LayerPair, TrainConfig, fit_moeless, fit_paper

TRAIN_SHARE = 0.7  # the paper's 7:3 train/test split, by request
FIT_SHARE = 0.8  # of the training requests, the rest validates (early stopping, blend, EMA smoothing)
ANCHOR_CANDIDATES = (0.0, 0.3, 1.0, 3.0)  # moeless's pull toward the gate copy, chosen per layer on held-out domains
MAX_DOMAIN_FOLDS = 3  # at most this many leave-one-domain-out folds for that choice
TRIAL_EPOCH_SHARE = 3  # anchor trials run epochs // this


@dataclass(frozen=True)
class RoutingProfile:
    """What training needs from one profile, as plain arrays."""

    samples: RoutingSamples  # the router-sampled tokens
    load: np.ndarray  # [iterations, layers, experts] every iteration's full token counts


@dataclass
class LayerPredictors:
    """The trained predictors of one target layer at one distance, plus how moeless blends."""

    layer: int  # target MoE layer (l + d) whose load is predicted
    distance: int  # d: the input is the router input of MoE layer `layer - distance`
    moeless: GateCopy
    paper: GateCopy
    blend: Blend


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _logits(x: torch.Tensor, weight: np.ndarray, bias: np.ndarray | None) -> torch.Tensor:
    """x: [tokens, hidden], weight: [experts, hidden] -> [tokens, experts]."""
    out = x @ _tensor(weight).T
    return out if bias is None else out + _tensor(bias)


def _token_loads(fit: GateCopy, x: torch.Tensor, route: Callable, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-batch token-level count estimates of a moeless predictor: {"soft", "hard"} -> [batches, experts]."""
    with torch.no_grad():
        probs = fit.soft_probs(x)  # [tokens, experts]
        ids = route(_logits(x, fit.weight, fit.bias)).numpy()
    return {"soft": batch_sums(probs.numpy(), batches), "hard": batch_counts(ids, batches, probs.shape[1])}


def check_distances(distances: list[int], num_layers: int) -> None:
    for d in distances:
        if d < 1:
            raise MoelessError(f"--distance must be at least 1, got {d}")
        if d >= num_layers:
            raise MoelessError(
                f"--distance {d} is out of range: the model has {num_layers} MoE layers, "
                f"so a distance must be within 1..{num_layers - 1}"
            )


@dataclass(frozen=True)
class Split:
    """The samples by role, split by request, and the batches validation and test are scored on."""

    training: RoutingSamples  # every training sample (fit + val)
    fit: RoutingSamples  # what the predictors are fitted on
    val: RoutingSamples  # early stopping, blend and EMA smoothing
    test: RoutingSamples  # held-out requests, or the eval profile
    test_load: np.ndarray  # [iterations, layers, experts] of the test side's profile
    val_iters: np.ndarray  # [batches] profile iteration of each validation batch
    val_batches: list[np.ndarray]  # sample indices of each validation batch
    test_iters: np.ndarray  # [batches] profile iteration of each test batch
    test_batches: list[np.ndarray]  # sample indices of each test batch


def _split(train: RoutingProfile, eval_profile: RoutingProfile | None, seed: int) -> Split:
    """Split the samples by request into fit, validation and test (the eval profile, when given)."""
    samples = train.samples
    if eval_profile is None:
        train_mask, test_mask = split_by_request(samples.request_ids, TRAIN_SHARE, seed)
        test, test_load = samples.subset(test_mask), train.load
        samples = samples.subset(train_mask)
    else:
        test, test_load = eval_profile.samples, eval_profile.load
    if np.unique(samples.request_ids).size < 2:  # too few to hold any out: validate on what we fit
        fit = val = samples
    else:
        fit_mask, val_mask = split_by_request(samples.request_ids, FIT_SHARE, seed + 1)
        fit, val = samples.subset(fit_mask), samples.subset(val_mask)
    val_iters, val_batches = iteration_batches(val.iteration_ids, MIN_BATCH_TOKENS)
    test_iters, test_batches = iteration_batches(test.iteration_ids, MIN_BATCH_TOKENS)
    return Split(samples, fit, val, test, test_load, val_iters, val_batches, test_iters, test_batches)


def planned_epochs(train: RoutingProfile, num_layers: int, distances: list[int], epochs: int) -> int:
    """Training epochs `train_and_evaluate` will run in all (for a progress bar)."""
    folds = min(train.samples.num_domains, MAX_DOMAIN_FOLDS) if train.samples.num_domains > 1 else 0
    trial_epochs = max(1, epochs // TRIAL_EPOCH_SHARE)
    per_layer = 2 * epochs + folds * len(ANCHOR_CANDIDATES) * trial_epochs  # paper, moeless, anchor trials
    return sum(num_layers - d for d in distances) * per_layer


def _pair(fit: RoutingSamples, val: RoutingSamples, source: int, target: int, gates: GateBank) -> LayerPair:
    """Training material for predicting layer `target` from layer `source`'s router input."""
    return LayerPair(
        x_train=_tensor(fit.router_inputs[:, source]),
        topk_train=torch.from_numpy(fit.true_topk[:, target].astype(np.int64)),
        teacher_train=_logits(_tensor(fit.router_inputs[:, target]), gates.weight[target], gates.layer_bias(target)),
        x_val=_tensor(val.router_inputs[:, source]),
        topk_val=val.true_topk[:, target],
        train_batches=iteration_batches(fit.iteration_ids, MIN_BATCH_TOKENS)[1],
    )


def domain_folds(samples: RoutingSamples, seed: int) -> list[tuple[RoutingSamples, RoutingSamples]]:
    """Leave-one-domain-out (fit, held-out domain) pairs; none when the samples have one domain."""
    domains = np.unique(samples.domain_ids)
    if domains.size < 2:
        return []
    held_out = np.random.default_rng(seed + 2).permutation(domains)[:MAX_DOMAIN_FOLDS]
    return [(samples.subset(samples.domain_ids != d), samples.subset(samples.domain_ids == d)) for d in held_out]


def choose_anchor(
    folds: list[tuple[RoutingSamples, RoutingSamples]], source: int, target: int, gates: GateBank,
    config: TrainConfig, on_epoch: Callable[[], None] | None, route: Callable,
) -> tuple[float, list[tuple[GateCopy, RoutingSamples]]]:
    """The pull toward the gate copy whose predictor transfers best to domains it did not see.

    Fine-tuning on some traffic can overfit it; the gate copy is the prior that generalises. The
    candidate with the best mean recall on held-out domains wins (ties: the stronger pull).
    Without several domains the configured default is kept. Returns (pull, the winner's fold
    predictors with the domain each was scored on).
    """
    if not folds:
        return config.anchor_weight, []
    w, b = gates.weight[target], gates.layer_bias(target)
    trials = {}
    for anchor in ANCHOR_CANDIDATES:
        # a third of the epochs: enough to see which pull transfers, at a fraction of the cost
        trial = dataclasses.replace(config, anchor_weight=anchor, calibration_steps=0, epochs=max(1, config.epochs // TRIAL_EPOCH_SHARE))
        fits = [fit_moeless(_pair(fit, held, source, target, gates), w, b, gates.top_k, trial, on_epoch, route) for fit, held in folds]
        trials[anchor] = (float(np.mean([f.val_recall_after for f in fits])), [(f, held) for f, (_, held) in zip(fits, folds)])
    best = max(score for score, _ in trials.values())
    anchor = max(a for a, (score, _) in trials.items() if score >= best - 1e-9)
    return anchor, trials[anchor][1]


def transfer_blend_weight(
    fold_fits: list[tuple[GateCopy, RoutingSamples]], source: int, target: int, route: Callable,
    layer_load: np.ndarray, alpha: float, num_experts: int,
) -> float:
    """The token share of the history blend that held-out domains support (1.0 without folds).

    layer_load: [iterations, experts] of the training profiles. Each fold predictor's top-k counts
    on the domain it did not see are blended with the EMA prior; the best share caps moeless's.
    """
    token, prior, true = [], [], []
    for fit, held in fold_fits:
        iterations, batches = iteration_batches(held.iteration_ids, MIN_BATCH_TOKENS)
        ids = route(_logits(_tensor(held.router_inputs[:, source]), fit.weight, fit.bias)).numpy()
        token.append(batch_counts(ids, batches, num_experts))
        prior.append(ema_prior(layer_load, alpha)[iterations])
        true.append(batch_counts(held.true_topk[:, target], batches, num_experts))
    if not token:
        return 1.0
    return choose_blend({"hard": np.concatenate(token)}, np.concatenate(prior), np.concatenate(true))[1]


def train_and_evaluate(
    train: RoutingProfile,
    eval_profile: RoutingProfile | None,
    gates: GateBank,
    distances: list[int],
    config: TrainConfig,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[dict, list[LayerPredictors]]:
    """Fit the moeless and published predictors for every target layer and distance; score all methods.

    Returns (report with the fixed JSON core {"layers": [...], "summary": {...}}, predictors).
    """
    check_distances(distances, gates.num_layers)
    split = _split(train, eval_profile, config.seed)
    folds = domain_folds(split.training, config.seed)
    entries, predictors = [], []
    for distance in distances:
        for target in range(distance, gates.num_layers):
            predictor, anchor = _train_layer(train, split, folds, gates, target - distance, target, config, on_epoch)
            anchor_note = {"anchor": anchor, "anchor_chosen_on": "held-out domains" if folds else "default"}
            entries.append(_score_layer(split, gates, predictor, _router(gates, target), anchor_note))
            predictors.append(predictor)
    report = {"layers": entries, "summary": summarise(entries), "split": _split_report(split, eval_profile is not None)}
    return report, predictors


def _router(gates: GateBank, target: int) -> Callable:
    """Logits [tokens, experts] -> top-k ids [tokens, k] as the target layer's router picks them."""
    corr = gates.layer_correction(target)
    return functools.partial(
        select_topk, top_k=gates.top_k, score=gates.score, correction=None if corr is None else _tensor(corr),
        num_groups=gates.num_groups, top_groups=gates.top_groups,
    )


def _train_layer(train: RoutingProfile, split: Split, folds: list[tuple[RoutingSamples, RoutingSamples]],
                 gates: GateBank, source: int, target: int, config: TrainConfig,
                 on_epoch: Callable[[], None] | None) -> tuple[LayerPredictors, float]:
    """Fit both predictors of one (target, distance) and choose moeless's blend; returns (predictors, anchor)."""
    w, b, route = gates.weight[target], gates.layer_bias(target), _router(gates, target)
    pair = _pair(split.fit, split.val, source, target, gates)
    paper = fit_paper(pair, w, b, route, config, on_epoch)
    anchor, fold_fits = choose_anchor(folds, source, target, gates, config, on_epoch, route)
    moeless = fit_moeless(pair, w, b, gates.top_k, dataclasses.replace(config, anchor_weight=anchor), on_epoch, route)

    # history prior and blend, chosen on validation requests of the training profile
    val_true = batch_counts(split.val.true_topk[:, target], split.val_batches, gates.num_experts)
    alpha = choose_alpha(train.load[:, target], split.val_iters, val_true)
    val_prior = ema_prior(train.load[:, target], alpha)[split.val_iters]
    mode, weight = choose_blend(_token_loads(moeless, pair.x_val, route, split.val_batches), val_prior, val_true)
    # trust the tokens no more than they earned on domains they were not trained on
    cap = transfer_blend_weight(fold_fits, source, target, route, train.load[:, target], alpha, gates.num_experts)
    return LayerPredictors(target, target - source, moeless, paper, Blend(min(weight, cap), alpha, mode)), anchor


def _score_layer(split: Split, gates: GateBank, predictor: LayerPredictors, route: Callable,
                 anchor_note: dict) -> dict:
    """Every method on the same held-out tokens and batches: the layer's report entry."""
    target, blend, num_experts = predictor.layer, predictor.blend, gates.num_experts
    source = target - predictor.distance
    moeless, paper, w, b = predictor.moeless, predictor.paper, gates.weight[target], gates.layer_bias(target)
    test, test_batches, test_iters = split.test, split.test_batches, split.test_iters
    x_test = _tensor(test.router_inputs[:, source])
    moeless_counts = _token_loads(moeless, x_test, route, test_batches)
    token_topk = {
        "moeless": route(_logits(x_test, moeless.weight, moeless.bias)).numpy(),
        "moeless-paper": route(_logits(x_test, paper.weight, paper.bias)).numpy(),
        "reused-gate": route(_logits(x_test, w, b)).numpy(),
    }
    layer_load = split.test_load[:, target]
    batch_loads = {
        "moeless": blended_loads(moeless_counts[blend.mode], ema_prior(layer_load, blend.alpha)[test_iters], blend.weight),
        "moeless-paper": batch_counts(token_topk["moeless-paper"], test_batches, num_experts),
        "reused-gate": batch_counts(token_topk["reused-gate"], test_batches, num_experts),
        "ema": ema_prior(layer_load, blend.alpha)[test_iters],
        "last": ema_prior(layer_load, 1.0)[test_iters],
        "moeless-tokens": moeless_counts["soft"],  # ablation: calibrated soft counts, no history blend
    }
    token_topk["moeless-tokens"] = token_topk["moeless"]
    true_topk = test.true_topk[:, target]
    return {
        "layer": target,
        "distance": predictor.distance,
        "input_layer": source,
        "eval_tokens": int(test.num_samples),
        "eval_batches": len(test_batches),
        "paper_fine_tuned": paper.fine_tuned,
        "paper_epochs": paper.epochs_run,
        "blend_weight": blend.weight,
        "count_mode": blend.mode,
        "ema_alpha": blend.alpha,
        **anchor_note,
        "methods": score_layer(true_topk, token_topk, batch_loads, batch_counts(true_topk, test_batches, num_experts)),
    }


def _split_report(split: Split, eval_profile: bool) -> dict:
    return {
        "fit_requests": int(np.unique(split.fit.request_ids).size),
        "val_requests": int(np.unique(split.val.request_ids).size),
        "test_requests": int(np.unique(split.test.request_ids).size),
        "test_tokens": int(split.test.num_samples),
        "test_batches": len(split.test_batches),
        "min_batch_tokens": MIN_BATCH_TOKENS,
        "held_out": "eval-profile" if eval_profile else "requests",
    }
