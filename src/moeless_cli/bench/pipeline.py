"""Bench stages, each cached in the out dir and reused when its inputs are unchanged.

  profile/                  the profile job on the routing model's prompts (router inputs kept)
  predictor.safetensors     the predictor job on that profile (d = 1)
  plan-<preset>-<hw>-<G>.json   the plan job with spares (ilp) for the preset's experts on the cluster
  stages.json               the inputs each cached stage was made from: its job's Request, as a stable dict

Each stage calls the same job as its command (`jobs/profile.py`, `jobs/predictor.py`, `jobs/plan.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import orjson

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json, write_json_atomic

if TYPE_CHECKING:
    from moeless_cli.jobs.plan import PlanRequest, PlanSource
    from moeless_cli.jobs.predictor import TrainRequest
    from moeless_cli.jobs.profile import ProfileRequest
    from moeless_cli.planning.plan import Plan

SYSTEMS = ("static", "eplb", "eplb+balanced", "oracle", "moeless-paper", "moeless")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    """A stage's output and whether it was reused from the cache."""

    path: Path  # what the stage made (a profile directory, a predictor file, a plan file)
    reused: bool  # made by an earlier run from the same inputs
    key: dict[str, Any]  # the inputs it was made from (as stored in stages.json)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "reused": self.reused}


def request_key(request: Any) -> dict[str, Any]:
    """A job Request's fields as a stable JSON-shaped dict (paths as strings, tuples as lists)."""
    return orjson.loads(orjson.dumps(asdict(request), default=str))


def check_routing_model(model: str, preset: Any) -> dict[str, Any]:
    """The routing model's config, refused early when its experts/top-k cannot feed the preset."""
    from moeless_cli.models.families import adapter_for
    from moeless_cli.models.loading import read_model_config, resolve_model_path

    path = resolve_model_path(model)
    config = read_model_config(path)
    adapter = adapter_for(config, str(path))
    experts = int(config.get(adapter.num_experts_key) or 0)
    top_k = int(config.get(adapter.top_k_key) or 0)
    if top_k < preset.top_k or experts < 1 or preset.num_experts % experts:
        raise MoelessError(
            f"model {model} routes {experts} experts top-{top_k}; preset {preset.name} needs top-{preset.top_k} (or "
            f"more: the heaviest are kept) and an expert count dividing {preset.num_experts} (built-in: tiny-mixtral "
            "8 top-2, tiny-olmoe 64 top-8)"
        )
    return {"path": str(path), "experts": experts, "top_k": top_k}


def model_fingerprint(model: str) -> str:
    """sha256 of the checkpoint's config and weight files: a re-shipped model invalidates the cache."""
    import hashlib

    from moeless_cli.models.loading import resolve_model_path

    path = resolve_model_path(model)
    digest = hashlib.sha256()
    for file in sorted([path / "config.json", *path.glob("*.safetensors"), *path.glob("*.bin")]):
        if file.is_file():
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]




def _stages_file(out: Path) -> Path:
    return out / "stages.json"


def _read_stages(out: Path) -> dict[str, Any]:
    """stages.json, or {} when it is missing or unreadable (every stage is then made anew)."""
    if not _stages_file(out).is_file():
        return {}
    try:
        stages = read_json(_stages_file(out), what="bench stages")
    except MoelessError:
        return {}
    return stages if isinstance(stages, dict) else {}


def _cached(out: Path, stage: str, key: dict[str, Any], target: Path) -> bool:
    return target.exists() and _read_stages(out).get(stage) == key


def _remember(out: Path, stage: str, key: dict[str, Any]) -> None:
    write_json_atomic(_stages_file(out), _read_stages(out) | {stage: key})


def profile_stage(out: Path, request: ProfileRequest, say: Say) -> Stage:
    """Record (or reuse) the routing profile at request.out."""
    from moeless_cli.jobs.profile import record_profile

    key = {"fingerprint": model_fingerprint(request.model), **request_key(request)}
    if _cached(out, "profile", key, request.out):
        return Stage(request.out, True, key)
    say(f"profiling {request.model} on {request.dataset}")
    record_profile(request)
    _remember(out, "profile", key)
    return Stage(request.out, False, key)


def predictor_stage(out: Path, request: TrainRequest, profile: Stage, say: Say) -> Stage:
    """Train (or reuse) the load predictors of the profile at request.out."""
    from moeless_cli.jobs.predictor import train_predictor

    key = {"profile": profile.key, **request_key(request)}
    if _cached(out, "predictor", key, request.out):
        return Stage(request.out, True, key)
    say("training the load predictors")
    train_predictor(request)
    _remember(out, "predictor", key)
    return Stage(request.out, False, key)


def plan_stage(out: Path, request: PlanRequest, source: PlanSource, say: Say) -> tuple[Plan, Stage]:
    """Solve (or reuse) the moeless starting plan for source's loads at request.out. Returns (plan, stage)."""
    from moeless_cli.jobs.plan import PlanProgress, plan
    from moeless_cli.plan_io import read_plan

    key = {"source": source.fingerprint(), **request_key(request)}
    name = request.out.stem
    if _cached(out, name, key, request.out):
        return read_plan(request.out)[0], Stage(request.out, True, key)
    result = plan(request, source, PlanProgress(start=lambda description, layers: say(description), say=say))
    _remember(out, name, key)
    return result.plan, Stage(request.out, False, key)
