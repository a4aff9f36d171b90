"""Bench stages, each cached in the out dir and reused when its inputs are unchanged.

  profile/                  `moeless profile` of the routing model on the prompts (router inputs kept)
  predictor.safetensors     `moeless train-predictor` on that profile (d = 1)
  plan-<preset>-<hw>-<G>.json   `moeless plan --spares` (ilp) for the preset's experts on the cluster
  stages.json               the inputs each cached stage was made from
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.fileio import read_json, write_json_atomic

SYSTEMS = ("static", "eplb", "oracle", "moeless-paper", "moeless")
MODES = ("auto", "sim", "real")


@dataclass
class BenchRequest:
    model: str | None = None  # routing model (built-in name or checkpoint); None: the preset's
    preset: str = "mixtral-8x7b"  # model sizes simulated
    hardware: str = "a6000"  # GPU model
    gpus: int = 8  # GPUs in the simulated cluster
    trace: str = "azure-conv"  # arrivals and request lengths
    dataset: str = "mix"  # prompts whose routing is recorded
    batching: str = "continuous"  # or "paper": the published one-second batches
    mode: str = "auto"  # "sim", "real", or "auto": real when this machine has --gpus CUDA devices, else sim
    time_model: str = "default"  # "default", "roofline" or "paper"
    max_requests: int = 200  # first requests of the trace
    time_scale: float = 1.0  # >1 compresses arrivals
    keep_alive_s: float = 5.0  # serverless keep-alive
    equal_budget: bool = False  # hold the serverless systems to EPLB's replicas per layer (else: memory)
    num_prompts: int = 64  # profile: prompts recorded
    max_new_tokens: int = 16  # profile: decode steps recorded per prompt
    max_prompt_tokens: int = 128  # profile: prompt truncation
    epochs: int = 30  # predictor training epochs
    plan_seconds: float = 20.0  # ilp time budget
    out: Path = Path("bench-out")  # where stages and reports go
    devices: tuple[str, ...] = ("cpu",)  # real mode: devices serve's workers go on
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))

    def validate(self) -> None:
        from moeless_cli.sim.hardware import get_hardware
        from moeless_cli.sim.presets import get_preset
        from moeless_cli.online.batching import BATCHING
        from moeless_cli.sim.timemodel import TIME_MODELS

        get_preset(self.preset)
        get_hardware(self.hardware)
        require_choice("--mode", self.mode, MODES)
        require_choice("--batching", self.batching, BATCHING)
        require_choice("--time-model", self.time_model, TIME_MODELS)
        if self.gpus < 1:
            raise MoelessError(f"--gpus must be at least 1, got {self.gpus}")
        if self.max_requests < 1:
            raise MoelessError(f"--max-requests must be at least 1, got {self.max_requests}")
        if self.keep_alive_s < 0:
            raise MoelessError(f"--keep-alive must be non-negative, got {self.keep_alive_s}")
        for name in self.systems:
            if name not in SYSTEMS:
                raise MoelessError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")

    def resolve_mode(self, cuda_devices: int | None = None) -> None:
        """Settle "auto": the requested cluster runs for real when this machine has that many CUDA
        devices (workers on cuda:0..G-1), and is simulated when it is larger than the machine."""
        if self.mode != "auto":
            return
        if cuda_devices is None:
            import torch

            cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if cuda_devices >= self.gpus:
            self.mode, self.devices = "real", tuple(f"cuda:{i}" for i in range(self.gpus))
        else:
            self.mode = "sim"

    def routing_model(self) -> str:
        from moeless_cli.sim.presets import get_preset

        return self.model or get_preset(self.preset).routing_model


def check_routing_model(model: str, preset: Any) -> dict[str, Any]:
    """The routing model's config, refused early when its experts/top-k cannot feed the preset."""
    from moeless_cli.models.families import adapter_for
    from moeless_cli.models.loading import read_model_config, resolve_model_path

    path = resolve_model_path(model)
    config = read_model_config(path)
    adapter = adapter_for(config, str(path))
    experts = int(config.get(adapter.num_experts_key) or 0)
    top_k = int(config.get(adapter.top_k_key) or 0)
    if top_k != preset.top_k or experts < 1 or preset.num_experts % experts:
        raise MoelessError(
            f"model {model} routes {experts} experts top-{top_k}; preset {preset.name} needs top-{preset.top_k} and an "
            f"expert count dividing {preset.num_experts} (built-in: tiny-mixtral 8 top-2, tiny-olmoe 64 top-8)"
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


def _cached(out: Path, stage: str, key: dict[str, Any], target: Path) -> bool:
    if not target.exists() or not _stages_file(out).is_file():
        return False
    try:
        stages = read_json(_stages_file(out), what="bench stages")
    except MoelessError:
        return False
    return isinstance(stages, dict) and stages.get(stage) == key


def _remember(out: Path, stage: str, key: dict[str, Any]) -> None:
    stages: dict[str, Any] = {}
    if _stages_file(out).is_file():
        try:
            loaded = read_json(_stages_file(out), what="bench stages")
            stages = loaded if isinstance(loaded, dict) else {}
        except MoelessError:
            stages = {}
    stages[stage] = key
    write_json_atomic(_stages_file(out), stages)


def profile_stage(request: BenchRequest, model: str, say: Callable[[str], None]) -> tuple[Path, bool]:
    """Record (or reuse) the routing profile. Returns (directory, reused)."""
    from moeless_cli.profiling.record import record_profile
    from moeless_cli.profiling.runner import ProfileOptions

    target = request.out / "profile"
    options = ProfileOptions(num_prompts=request.num_prompts, batch_size=16, max_new_tokens=request.max_new_tokens,
                             max_prompt_tokens=request.max_prompt_tokens, router_samples=1_000_000, seed=0)
    key = {"model": model, "fingerprint": model_fingerprint(model), "dataset": request.dataset, **options.as_dict()}
    if _cached(request.out, "profile", key, target):
        return target, True
    say(f"profiling {model} on {request.dataset}")
    record_profile(model, request.dataset, options, out=target)
    _remember(request.out, "profile", key)
    return target, False


def predictor_stage(request: BenchRequest, profile_dir: Path, say: Callable[[str], None]) -> tuple[Path, bool]:
    from moeless_cli.predictor.run import TrainRequest, run_training

    target = request.out / "predictor.safetensors"
    key = {"profile": _profile_key(request), "epochs": request.epochs}
    if _cached(request.out, "predictor", key, target):
        return target, True
    say("training the load predictors")
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainRequest)}
    source = {"profiles": [profile_dir]} if "profiles" in names else {"profile": profile_dir}
    run_training(TrainRequest(**source, eval_profile=None, distances=[1], accuracy_threshold=0.8,
                              epochs=request.epochs, out=target, model=None, seed=0))
    _remember(request.out, "predictor", key)
    return target, False


def _profile_key(request: BenchRequest) -> Any:
    if not _stages_file(request.out).is_file():
        return None
    stages = read_json(_stages_file(request.out), what="bench stages")
    return stages.get("profile") if isinstance(stages, dict) else None


def plan_stage(request: BenchRequest, history: np.ndarray, batches: np.ndarray, slots: int, budget: int,
               say: Callable[[str], None]) -> tuple[Any, bool]:
    """The moeless starting plan for history: [layers, experts] on the cluster: ilp, then spare replicas
    up to the budget where the sample batches [batches, layers, experts] straggle. Returns (Plan, reused)."""
    from moeless_cli.plan_io import read_plan, write_plan
    from moeless_cli.planning import PlanningProblem, solve
    from moeless_cli.planning.spares import fill_plan_spares

    target = request.out / f"plan-{request.preset}-{request.hardware}-{request.gpus}.json"
    key = {"profile": _profile_key(request), "gpus": request.gpus, "slots": slots, "budget": budget,
           "layers": int(history.shape[0]), "spare_batches": int(batches.shape[0]),
           "experts": int(history.shape[1]), "seconds": request.plan_seconds}
    if _cached(request.out, f"plan-{request.preset}-{request.hardware}-{request.gpus}", key, target):
        return read_plan(target)[0], True
    say("planning replicas (ilp)")
    problem = PlanningProblem(num_gpus=request.gpus, slots_per_gpu=slots, replica_budget=budget,
                              time_limit_s=request.plan_seconds)
    plan = solve("ilp", history, problem).plan
    say("spare replicas")
    plan = fill_plan_spares(plan, batches, slots, budget)
    write_plan(target, plan, {"source": "moeless bench", "preset": request.preset, "hardware": request.hardware})
    _remember(request.out, f"plan-{request.preset}-{request.hardware}-{request.gpus}", key)
    return plan, False


def request_dict(request: BenchRequest) -> dict[str, Any]:
    doc = asdict(request)
    doc["out"] = str(request.out)
    return doc
