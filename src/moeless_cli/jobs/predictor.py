"""The predictor job: profiles + model in, a predictor file and its evaluation report out.

`train_predictor` reads the profiles, loads the model's routers, trains and scores every
(target layer, distance) predictor (`predictor/run.py`, `predictor/pipeline.py`) and writes the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from moeless_cli.errors import MoelessError

MAX_EPOCHS = 100_000  # epochs per predictor: far past where training stops improving

if TYPE_CHECKING:
    from moeless_cli.predictor.pipeline import RoutingProfile


@dataclass(frozen=True)
class TrainRequest:
    profiles: list[Path]  # training profile directories (with router input samples), all of one model
    eval_profile: Path | None = None  # evaluate on this profile instead of held-out requests
    distances: list[int] = field(default_factory=lambda: [1])  # layers ahead to predict
    accuracy_threshold: float = 0.8  # paper method's layer-aware fine-tuning threshold on top-k recall
    epochs: int = 30  # most epochs per predictor
    out: Path | None = None  # predictor file; None: predictor.safetensors inside the first training profile
    model: str | None = None  # model checkpoint, if not where the profile recorded it
    seed: int = 0  # request split and training seed
    requests: tuple[int, ...] | None = None  # train only on these request ids of each profile (the rest are
    # held out, e.g. for bench's replay); None: every request

    def validate(self) -> None:
        from moeless_cli.checks import MAX_LAYERS, integer, number, seed

        integer("--epochs", self.epochs, 1, MAX_EPOCHS)
        number("--accuracy-threshold", self.accuracy_threshold, 0.0, 1.0)
        seed("--seed", self.seed)
        if not self.profiles:
            raise MoelessError("give at least one --profile")
        for distance in self.distances:
            integer("--distance", distance, 1, MAX_LAYERS)

    def out_file(self) -> Path:
        """--out, checked before training (not after): a regular file path (a symlink's target)
        in a writable place, not one of the profiles (fileio.output_file)."""
        from moeless_cli.fileio import output_file
        from moeless_cli.predictor.profile_data import default_out

        out = Path(self.out) if self.out is not None else default_out(self.profiles[0])
        output_file(out, "--out", inputs=[*self.profiles, self.eval_profile])
        return out


@dataclass(frozen=True)
class TrainResult:
    layers: list[dict[str, Any]]  # per (target layer, distance): every method's metrics (predictor/pipeline.py)
    summary: dict[str, Any]  # per method: metrics averaged over the layers
    split: dict[str, Any]  # how samples were split into fit, validation and test
    out: Path  # the predictor file written
    model_id: str  # the profiled model
    config_hash: str | None  # its config hash
    distances: list[int]  # layers ahead predicted
    accuracy_threshold: float  # the paper method's fine-tuning threshold
    gate_parameters: int  # parameters of one router
    predictor_parameters: int  # parameters of the largest moeless predictor
    train_seconds: float  # wall time of the job

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"out": str(self.out)}


def _read_profiles(request: TrainRequest) -> tuple[Any, RoutingProfile, RoutingProfile | None]:
    """(first training profile, every training profile merged, the eval profile's routing or None)."""
    from moeless_cli.predictor.profile_data import check_same_model, merge_profiles, routing_profile
    from moeless_cli.profiling import load_profile

    profile = load_profile(request.profiles[0])
    parts = [routing_profile(profile, request.requests)]
    for path in request.profiles[1:]:
        other = load_profile(path)
        check_same_model(profile, other, "--profile")
        parts.append(routing_profile(other, request.requests))
    evaluation = None
    if request.eval_profile is not None:
        other = load_profile(request.eval_profile)
        check_same_model(profile, other, "--eval-profile")
        evaluation = routing_profile(other)
    return profile, merge_profiles(parts), evaluation


def train_predictor(request: TrainRequest, on_epoch: Callable[[int], None] | None = None) -> TrainResult:
    """Train, evaluate, write the predictor file.

    on_epoch(total) is called after every training epoch with the planned total number of epochs.
    """
    from moeless_cli.predictor.pipeline import check_distances
    from moeless_cli.predictor.run import fit_predictors, load_gates, save_predictors
    from moeless_cli.predictor.train import TrainConfig

    started = time.perf_counter()
    request.validate()
    out = request.out_file()  # a bad output fails first
    profile, train, evaluation = _read_profiles(request)
    check_distances(request.distances, profile.num_layers)  # fail before loading anything heavy
    gates = load_gates(profile, request.model)
    config = TrainConfig(epochs=request.epochs, accuracy_threshold=request.accuracy_threshold, seed=request.seed)
    report, predictors = fit_predictors(train, evaluation, gates, request.distances, config, on_epoch)
    header = {
        "model_id": profile.model_id,
        "config_hash": profile.config_hash,
        "train_profiles": [str(p) for p in request.profiles],
        "train_requests": None if request.requests is None else list(request.requests),
        "eval_profile": None if request.eval_profile is None else str(request.eval_profile),
        "distances": request.distances,
        "accuracy_threshold": request.accuracy_threshold,
        "epochs": request.epochs,
        "seed": request.seed,
    }
    manifest = save_predictors(out, predictors, gates, header, report)
    return TrainResult(
        **report, out=out, model_id=profile.model_id, config_hash=profile.config_hash, distances=request.distances,
        accuracy_threshold=request.accuracy_threshold, gate_parameters=manifest["gate_parameters"],
        predictor_parameters=max((e["moeless_parameters"] for e in manifest["entries"]), default=0),
        train_seconds=round(time.perf_counter() - started, 3),
    )
