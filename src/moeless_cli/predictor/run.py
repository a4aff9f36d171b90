"""The train-predictor job: profiles + model in, predictor file + evaluation report out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from moeless_cli.errors import MoelessError


@dataclass(frozen=True)
class TrainRequest:
    profiles: list[Path]  # training profile directories (with router input samples), all of one model
    eval_profile: Path | None  # evaluate on this profile instead of held-out requests
    distances: list[int]  # layers ahead to predict
    accuracy_threshold: float  # paper method's layer-aware fine-tuning threshold on top-k recall
    epochs: int  # most epochs per predictor
    out: Path | None  # predictor file; default inside the training profile
    model: str | None  # model checkpoint override
    seed: int  # request split and training seed


def _single_threaded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn on one torch thread: predictor matrices are tiny ([tokens, hidden] x [hidden, experts]),
    so extra threads only add synchronisation, which on a busy machine costs more than the math."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run_training(request: TrainRequest, on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train, evaluate, write the predictor file; returns the JSON-ready result.

    on_epoch(total) is called after every training epoch with the planned total number of epochs.
    """
    from moeless_cli.models import load_moe_model
    from moeless_cli.predictor.gates import gates_from_model
    from moeless_cli.predictor.pipeline import (
        ANCHOR_CANDIDATES,
        MAX_DOMAIN_FOLDS,
        TRIAL_EPOCH_SHARE,
        check_distances,
        train_and_evaluate,
    )
    from moeless_cli.predictor.profile_data import (
        check_same_model,
        default_out,
        merge_profiles,
        model_location,
        routing_profile,
    )
    from moeless_cli.predictor.store import pack_predictors, save_predictor
    from moeless_cli.predictor.train import TrainConfig
    from moeless_cli.profiling import load_profile

    if not 0.0 <= request.accuracy_threshold <= 1.0:
        raise MoelessError(f"--accuracy-threshold must be within [0, 1], got {request.accuracy_threshold}")
    if not request.profiles:
        raise MoelessError("give at least one --profile")
    profile = load_profile(request.profiles[0])
    parts = [routing_profile(profile)]
    for path in request.profiles[1:]:
        other = load_profile(path)
        check_same_model(profile, other, "--profile")
        parts.append(routing_profile(other))
    train = merge_profiles(parts)
    check_distances(request.distances, profile.num_layers)  # fail before loading anything heavy
    evaluation = None
    if request.eval_profile is not None:
        other = load_profile(request.eval_profile)
        check_same_model(profile, other, "--eval-profile")
        evaluation = routing_profile(other)
    out = Path(request.out) if request.out is not None else default_out(request.profiles[0])
    if out.exists() and out.is_dir():
        raise MoelessError(f"--out {out} is a directory; give a file path such as {out / 'predictor.safetensors'}")
    existing = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):  # fail before training, not after
        raise MoelessError(f"cannot write --out {out}: {existing} is not writable")

    loaded = load_moe_model(request.model or model_location(profile))
    if profile.config_hash is not None and loaded.config_hash != profile.config_hash:
        raise MoelessError(
            f"model {loaded.model_id} (config hash {loaded.config_hash}) is not the model profile {profile.path} "
            f"was recorded on ({profile.model_id}, config hash {profile.config_hash}); pass the right one with --model"
        )
    gates = gates_from_model(loaded)
    del loaded  # only the routers are needed from here on
    if gates.num_layers != profile.num_layers or gates.num_experts != profile.num_experts:
        raise MoelessError(f"model routers ({gates.num_layers} layers x {gates.num_experts} experts) do not match the profile")

    config = TrainConfig(epochs=request.epochs, accuracy_threshold=request.accuracy_threshold, seed=request.seed)
    folds = min(train.samples.num_domains, MAX_DOMAIN_FOLDS) if train.samples.num_domains > 1 else 0
    trial_epochs = max(1, request.epochs // TRIAL_EPOCH_SHARE)
    per_layer = 2 * request.epochs + folds * len(ANCHOR_CANDIDATES) * trial_epochs  # paper, moeless, anchor trials
    planned = sum(profile.num_layers - d for d in request.distances) * per_layer

    def tick() -> None:
        if on_epoch is not None:
            on_epoch(planned)

    report, predictors = _single_threaded(train_and_evaluate, train, evaluation, gates, request.distances, config, tick)
    header = {
        "model_id": profile.model_id,
        "config_hash": profile.config_hash,
        "train_profiles": [str(p) for p in request.profiles],
        "eval_profile": None if request.eval_profile is None else str(request.eval_profile),
        "distances": request.distances,
        "accuracy_threshold": request.accuracy_threshold,
        "epochs": request.epochs,
        "seed": request.seed,
    }
    manifest, tensors = pack_predictors(predictors, gates, header, report)
    save_predictor(out, manifest, tensors)
    return {
        **report,
        "out": str(out),
        "model_id": profile.model_id,
        "config_hash": profile.config_hash,
        "distances": request.distances,
        "accuracy_threshold": request.accuracy_threshold,
        "gate_parameters": manifest["gate_parameters"],
        "predictor_parameters": max((e["moeless_parameters"] for e in manifest["entries"]), default=0),
    }
