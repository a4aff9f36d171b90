"""The torch-level steps of the predictor job (`jobs/predictor.py`): the model's routers, training, the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from moeless_cli.errors import MoelessError
from moeless_cli.predictor.gates import GateBank
from moeless_cli.predictor.pipeline import RoutingProfile, planned_epochs, train_and_evaluate
from moeless_cli.predictor.train import TrainConfig


def load_gates(profile: Any, model: str | None) -> GateBank:
    """The routers of the model `profile` was recorded on (`model` overrides where it lives).

    Refuses a model whose config hash or router shape differs from the profile's.
    """
    from moeless_cli.models import load_moe_model
    from moeless_cli.predictor.gates import gates_from_model
    from moeless_cli.predictor.profile_data import model_location

    loaded = load_moe_model(model or model_location(profile))
    if profile.config_hash is not None and loaded.config_hash != profile.config_hash:
        raise MoelessError(
            f"model {loaded.model_id} (config hash {loaded.config_hash}) is not the model profile {profile.path} "
            f"was recorded on ({profile.model_id}, config hash {profile.config_hash}); pass the right one with --model"
        )
    gates = gates_from_model(loaded)
    del loaded  # only the routers are needed from here on
    if gates.num_layers != profile.num_layers or gates.num_experts != profile.num_experts:
        raise MoelessError(f"model routers ({gates.num_layers} layers x {gates.num_experts} experts) do not match the profile")
    return gates


def fit_predictors(train: RoutingProfile, evaluation: RoutingProfile | None, gates: GateBank, distances: list[int],
                   config: TrainConfig, on_epoch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list]:
    """`train_and_evaluate` on one torch thread; returns (report, predictors).

    Predictor matrices are tiny ([tokens, hidden] x [hidden, experts]), so extra threads only add
    synchronisation, which on a busy machine costs more than the math. on_epoch(total) is called
    after every training epoch with the planned total number of epochs.
    """
    from moeless_cli.models.threads import torch_threads

    planned = planned_epochs(train, gates.num_layers, distances, config.epochs)

    def tick() -> None:
        if on_epoch is not None:
            on_epoch(planned)

    with torch_threads(1):
        return train_and_evaluate(train, evaluation, gates, distances, config, tick)


def save_predictors(out: Path, predictors: list, gates: GateBank, header: dict[str, Any],
                    report: dict[str, Any]) -> dict[str, Any]:
    """Write the predictor file; returns its manifest."""
    from moeless_cli.predictor.store import pack_predictors, save_predictor

    manifest, tensors = pack_predictors(predictors, gates, header, report)
    save_predictor(out, manifest, tensors)
    return manifest
