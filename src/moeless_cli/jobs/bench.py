"""The bench job: the whole pipeline (profile -> predictor -> plan) and every system side by side.

`run_bench` runs the stages through the same jobs as their commands (cached in the out dir,
`bench/pipeline.py`), then every system on a simulated cluster (`bench/compare.py`) or through
serve's runtime (`bench/real.py`), and writes bench.json, report.md and two plots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from moeless_cli.errors import MoelessError, require_choice

if TYPE_CHECKING:
    import numpy as np

    from moeless_cli.bench.compare import OnProgress
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
        if self.gpus < 1:
            raise MoelessError(f"--gpus must be at least 1, got {self.gpus}")
        if self.max_requests < 1:
            raise MoelessError(f"--max-requests must be at least 1, got {self.max_requests}")
        if self.keep_alive_s < 0:
            raise MoelessError(f"--keep-alive must be non-negative, got {self.keep_alive_s}")

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
                              out=self.out / "profile")

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


def ratios(systems: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per system: mean MoE-layer latency and GB·s cost over static EP, EPLB and Oracle."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else float(a) / float(b)

    out: dict[str, dict[str, float | None]] = {}
    for name, core in systems.items():
        moe = core["moe_layer_ms"]["mean"]
        gbs = core["cost"]["gbs_proxy"]
        out[name] = {
            "moe_vs_static": ratio(moe, systems["static"]["moe_layer_ms"]["mean"]),
            "moe_vs_eplb": ratio(moe, systems["eplb"]["moe_layer_ms"]["mean"]),
            "moe_vs_oracle": ratio(moe, systems["oracle"]["moe_layer_ms"]["mean"]),
            "moe_vs_moeless_paper": ratio(moe, systems["moeless-paper"]["moe_layer_ms"]["mean"]),
            "gbs_vs_static": ratio(gbs, systems["static"]["cost"]["gbs_proxy"]),
            "gbs_vs_eplb": ratio(gbs, systems["eplb"]["cost"]["gbs_proxy"]),
        }
    return out


def _prepare(request: BenchRequest) -> Any:
    """Every check that can fail before minutes of work; returns the trace."""
    from moeless_cli.bench.pipeline import check_routing_model
    from moeless_cli.fileio import ensure_writable_parent
    from moeless_cli.sim.presets import get_preset
    from moeless_cli.workloads.traces import load_trace

    request.validate()
    request.resolve_mode()
    trace = load_trace(request.trace, time_scale=request.time_scale, max_requests=request.max_requests)
    if request.mode == "sim":
        check_routing_model(request.routing_model(), get_preset(request.preset))
    ensure_writable_parent(request.out)
    try:
        request.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoelessError(f"cannot create --out {request.out}: {exc.strerror}") from None
    return trace


def _write_outputs(result: BenchResult, out: Path) -> tuple[Path, ...]:
    from moeless_cli.bench.outputs import markdown_report, write_plots
    from moeless_cli.fileio import write_bytes_atomic, write_json_atomic

    files = [write_json_atomic(out / "bench.json", result.core())]
    files.append(write_bytes_atomic(out / "report.md", markdown_report(result).encode()))
    return tuple(files + write_plots(result, out))


def run_bench(request: BenchRequest, say: Callable[[str], None] = lambda _: None,
              on_progress: OnProgress | None = None) -> BenchResult:
    """The whole pipeline, every system, and the reports in request.out."""
    from moeless_cli.bench.pipeline import predictor_stage, profile_stage

    trace = _prepare(request)
    model = request.routing_model()
    profile = profile_stage(request.out, request.profile_request(), say)
    predictor = predictor_stage(request.out, request.train_request(), profile, say)
    if request.mode == "real":
        from moeless_cli.bench.real import run_real

        runs = run_real(request, model, profile.path, predictor.path, on_progress)
    else:
        from moeless_cli.bench.compare import run_sim

        runs = run_sim(request, model, trace, profile.path, predictor.path, say, on_progress)
    stages = {"profile": profile.as_dict(), "predictor": predictor.as_dict()}
    result = BenchResult(mode=request.mode, setting=runs.setting, systems=runs.systems, ratios=ratios(runs.systems),
                         stages=stages if runs.plan is None else stages | {"plan": runs.plan},
                         moe_layer_s=runs.moe_layer_s, simulator_check=runs.simulator_check)
    return dataclasses.replace(result, files=_write_outputs(result, request.out))
