"""The bench job's request and result (the job itself: `jobs/bench.py`). A leaf module: the bench
stages (pipeline, compare, real, outputs) and the job all import these types from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeless_cli.errors import MoelessError, require_choice

if TYPE_CHECKING:
    import numpy as np

    from moeless_cli.jobs.plan import PlanRequest
    from moeless_cli.jobs.predictor import TrainRequest
    from moeless_cli.jobs.profile import ProfileRequest

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

    def validate(self) -> None:
        from moeless_cli.online.batching import BATCHING
        from moeless_cli.sim.hardware import get_hardware
        from moeless_cli.sim.presets import get_preset
        from moeless_cli.sim.timemodel import TIME_MODELS

        get_preset(self.preset)
        get_hardware(self.hardware)
        require_choice("--mode", self.mode, MODES)
        require_choice("--batching", self.batching, BATCHING)
        require_choice("--time-model", self.time_model, TIME_MODELS)
        if self.model is not None and not str(self.model).strip():
            raise MoelessError("--model is empty: give a built-in name or a checkpoint folder (or leave it out)")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every numeric option (checks.py), the stages' own through their jobs' requests."""
        from moeless_cli.checks import MAX_COUNT, MAX_GPUS, MAX_SECONDS, integer, number

        integer("--gpus", self.gpus, 1, MAX_GPUS)
        integer("--max-requests", self.max_requests, 1, MAX_COUNT)
        number("--time-scale", self.time_scale, high=None, positive=True)
        number("--keep-alive", self.keep_alive_s, 0.0, MAX_SECONDS)
        number("plan_seconds", self.plan_seconds, high=MAX_SECONDS, positive=True)
        self.profile_request().validate()  # --num-prompts and the profile's sizes
        self.train_request().validate()  # --epochs

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

    def profile_request(self) -> ProfileRequest:
        """The profile stage: the routing model on the prompts, every token's router input kept."""
        from moeless_cli.jobs.profile import ProfileRequest
        from moeless_cli.profiling.runner import ProfileOptions

        options = ProfileOptions(num_prompts=self.num_prompts, batch_size=16, max_new_tokens=self.max_new_tokens,
                                 max_prompt_tokens=self.max_prompt_tokens, router_samples=1_000_000, seed=0)
        return ProfileRequest(model=self.routing_model(), dataset=self.dataset, options=options,
                              out=self.out / "profile", force=True)  # the bench folder's own cached stage

    def train_request(self) -> TrainRequest:
        """The predictor stage: d = 1 predictors on the profile."""
        from moeless_cli.jobs.predictor import TrainRequest

        return TrainRequest(profiles=[self.out / "profile"], distances=[1], accuracy_threshold=0.8,
                            epochs=self.epochs, out=self.out / "predictor.safetensors", seed=0)

    def plan_request(self, slots: int, budget: int) -> PlanRequest:
        """The plan stage: ilp within `slots` per GPU per layer, then spare replicas up to `budget` per layer."""
        from moeless_cli.jobs.plan import PlanRequest

        return PlanRequest(gpus=self.gpus, slots_per_gpu=slots, replica_budget=budget, spares=True, solver="ilp",
                           time_limit=self.plan_seconds,
                           out=self.out / f"plan-{self.preset}-{self.hardware}-{self.gpus}.json")


@dataclass(frozen=True)
class BenchResult:
    mode: str  # "sim" or "real"
    setting: dict[str, Any]  # the cluster, model, trace and options the systems ran on
    systems: dict[str, dict[str, Any]]  # system -> serve's JSON core
    ratios: dict[str, dict[str, float | None]]  # system -> its MoE latency and cost over the baselines'
    stages: dict[str, dict[str, Any]]  # stage -> where it is and whether it was reused
    moe_layer_s: dict[str, np.ndarray]  # system -> MoE-layer seconds (the latency CDF; not in the JSON)
    simulator_check: dict[str, Any] | None = None  # real mode: the simulator against the measured runs
    files: tuple[Path, ...] = ()  # bench.json, report.md and the plots, once written

    def core(self) -> dict[str, Any]:
        """bench.json: everything but the files and the raw latencies."""
        doc = {"mode": self.mode, "setting": self.setting, "systems": self.systems, "ratios": self.ratios,
               "stages": self.stages}
        return doc if self.simulator_check is None else doc | {"simulator_check": self.simulator_check}

    def to_json(self) -> dict[str, Any]:
        return self.core() | {"files": [str(f) for f in self.files]}
