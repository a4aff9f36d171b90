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


def _split(train: RoutingProfile, eval_profile: RoutingProfile | None, seed: int):
    """(all training samples, fit samples, val samples, test samples, test-side load), by request."""
    samples = train.samples
    if eval_profile is None:
        train_mask, test_mask = split_by_request(samples.request_ids, TRAIN_SHARE, seed)
        test, test_load = samples.subset(test_mask), train.load
        samples = samples.subset(train_mask)
    else:
        test, test_load = eval_profile.samples, eval_profile.load
    if np.unique(samples.request_ids).size < 2:  # too few to hold any out: validate on what we fit
        return samples, samples, samples, test, test_load
    fit_mask, val_mask = split_by_request(samples.request_ids, FIT_SHARE, seed + 1)
    return samples, samples.subset(fit_mask), samples.subset(val_mask), test, test_load


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
    num_layers, num_experts, top_k = gates.num_layers, gates.num_experts, gates.top_k
    check_distances(distances, num_layers)
    training, fit, val, test, test_load = _split(train, eval_profile, config.seed)
    val_iters, val_batches = iteration_batches(val.iteration_ids, MIN_BATCH_TOKENS)
    test_iters, test_batches = iteration_batches(test.iteration_ids, MIN_BATCH_TOKENS)
    folds = domain_folds(training, config.seed)
    entries, predictors = [], []
    for distance in distances:
        for target in range(distance, num_layers):
            source = target - distance
            w, b, corr = gates.weight[target], gates.layer_bias(target), gates.layer_correction(target)
            route = functools.partial(
                select_topk, top_k=top_k, score=gates.score, correction=None if corr is None else _tensor(corr),
                num_groups=gates.num_groups, top_groups=gates.top_groups,
            )
            pair = _pair(fit, val, source, target, gates)
            paper = fit_paper(pair, w, b, route, config, on_epoch)
            anchor, fold_fits = choose_anchor(folds, source, target, gates, config, on_epoch, route)
            moeless = fit_moeless(pair, w, b, top_k, dataclasses.replace(config, anchor_weight=anchor), on_epoch, route)

            # history prior and blend, chosen on validation requests of the training profile
            val_true = batch_counts(val.true_topk[:, target], val_batches, num_experts)
            alpha = choose_alpha(train.load[:, target], val_iters, val_true)
            val_prior = ema_prior(train.load[:, target], alpha)[val_iters]
            mode, weight = choose_blend(_token_loads(moeless, pair.x_val, route, val_batches), val_prior, val_true)
            # trust the tokens no more than they earned on domains they were not trained on
            cap = transfer_blend_weight(fold_fits, source, target, route, train.load[:, target], alpha, num_experts)
            blend = Blend(min(weight, cap), alpha, mode)

            # every method on the same held-out tokens and batches
            x_test = _tensor(test.router_inputs[:, source])
            moeless_counts = _token_loads(moeless, x_test, route, test_batches)
            token_topk = {
                "moeless": route(_logits(x_test, moeless.weight, moeless.bias)).numpy(),
                "moeless-paper": route(_logits(x_test, paper.weight, paper.bias)).numpy(),
                "reused-gate": route(_logits(x_test, w, b)).numpy(),
            }
            layer_load = test_load[:, target]
            batch_loads = {
                "moeless": blended_loads(moeless_counts[blend.mode], ema_prior(layer_load, alpha)[test_iters], blend.weight),
                "moeless-paper": batch_counts(token_topk["moeless-paper"], test_batches, num_experts),
                "reused-gate": batch_counts(token_topk["reused-gate"], test_batches, num_experts),
                "ema": ema_prior(layer_load, alpha)[test_iters],
                "last": ema_prior(layer_load, 1.0)[test_iters],
                "moeless-tokens": moeless_counts["soft"],  # ablation: calibrated soft counts, no history blend
            }
            token_topk["moeless-tokens"] = token_topk["moeless"]
            true_topk = test.true_topk[:, target]
            entries.append(
                {
                    "layer": target,
                    "distance": distance,
                    "input_layer": source,
                    "eval_tokens": int(test.num_samples),
                    "eval_batches": len(test_batches),
                    "paper_fine_tuned": paper.fine_tuned,
                    "paper_epochs": paper.epochs_run,
                    "blend_weight": blend.weight,
                    "count_mode": blend.mode,
                    "ema_alpha": blend.alpha,
                    "anchor": anchor,
                    "anchor_chosen_on": "held-out domains" if folds else "default",
                    "methods": score_layer(true_topk, token_topk, batch_loads, batch_counts(true_topk, test_batches, num_experts)),
                }
            )
            predictors.append(LayerPredictors(target, distance, moeless, paper, blend))
    report = {
        "layers": entries,
        "summary": summarise(entries),
        "split": {
            "fit_requests": int(np.unique(fit.request_ids).size),
            "val_requests": int(np.unique(val.request_ids).size),
            "test_requests": int(np.unique(test.request_ids).size),
            "test_tokens": int(test.num_samples),
            "test_batches": len(test_batches),
            "min_batch_tokens": MIN_BATCH_TOKENS,
            "held_out": "eval-profile" if eval_profile is not None else "requests",
        },
    }
    return report, predictors
