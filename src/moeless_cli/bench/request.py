"""The bench job's request and result (the job itself: `jobs/bench.py`). A leaf module: the bench
stages (pipeline, compare, real, outputs) and the job all import these types from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moeless_cli.errors import MoelessError, require_choice

if TYPE_CHECKING:
    from moeless_cli.jobs.plan import PlanRequest
    from moeless_cli.jobs.predictor import TrainRequest
    from moeless_cli.jobs.profile import ProfileRequest

MODES = ("auto", "sim", "real")


@dataclass
class BenchRequest:
    model: str | None = None  # routing model (built-in name or checkpoint); None: the preset's
    preset: str = "mixtral-8x7b"  # model sizes simulated
    hardware: str | None = None  # GPU model; None: the preset's (a6000; h100 for llama-4-scout, h200 for deepseek-v3)
    gpus: int = 8  # GPUs in the simulated cluster
    trace: str = "azure-conv"  # arrivals and request lengths
    dataset: str = "mix"  # prompts whose routing is recorded
    batching: str = "continuous"  # or "paper": the published one-second batches
    mode: str = "auto"  # "sim", "real", or "auto": real when this machine has --gpus CUDA devices, else sim
    time_model: str = "physical"  # "physical", "compute" (no weight streaming: an idealisation), "roofline", "paper"
    decision: str = "measured"  # host decisions' charge per layer: "measured", "none" or seconds (SimConfig.decision)
    in_sample: bool = False  # learners and replay see the same prompts and trace window (else: held out)
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
    pareto: bool = True  # sim mode: sweep replica memory per layer for the replicating systems (bench/pareto.py)
    pareto_iterations: int = 400  # the sweep replays this many first iterations of the same batches
    ablation: bool = False  # sim mode: moeless with each part removed in turn (bench/ablation.py)

    def validate(self) -> None:
        from moeless_cli.online.batching import BATCHING
        from moeless_cli.sim.hardware import get_hardware
        from moeless_cli.sim.presets import get_preset
        from moeless_cli.sim.timemodel import TIME_MODELS

        from moeless_cli.sim.simulator import parse_decision

        if self.hardware is None:
            self.hardware = get_preset(self.preset).default_hardware
        get_hardware(self.hardware)
        parse_decision(self.decision)
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
        integer("--pareto-iterations", self.pareto_iterations, 1, MAX_COUNT)
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

    @property
    def held_out(self) -> bool:
        """Learners and replay see different prompts and trace windows (simulated runs without --in-sample;
        real mode runs serve on the dataset's prompts as they are)."""
        return not self.in_sample and self.mode != "real"

    def load_trace(self) -> tuple[Any, int]:
        """(the trace window replayed, its first request's index in the trace): the first --max-requests
        requests in-sample; held out, the next --max-requests after them (the window before is the
        learners'), or the later half of a shorter trace."""
        from moeless_cli.workloads.traces import load_trace

        n = self.max_requests
        if not self.held_out:
            return load_trace(self.trace, time_scale=self.time_scale, max_requests=n), 0
        whole = load_trace(self.trace, time_scale=self.time_scale, max_requests=2 * n)
        start = n if len(whole) >= 2 * n else len(whole) // 2
        return trace_window(whole, start), start

    def replay_split(self, profile_dir: Path, trace_start: int) -> ReplaySplit:
        """Which profile requests the learners see and which are replayed (held out: each domain's first
        half trains, `sim.routing.held_out_requests`), and the trace window."""
        from moeless_cli.profiling import load_profile
        from moeless_cli.sim.routing import held_out_requests

        profile = load_profile(profile_dir)
        requests = int(profile.token_request.max()) + 1 if profile.token_request is not None else 0
        domains = profile.request_domain if profile.request_domain is not None else np.zeros(requests)
        domains = np.asarray(domains)[:requests]
        if not self.held_out:
            every = tuple(range(requests))
            return ReplaySplit(False, every, every, trace_start)
        train, replay = held_out_requests(domains)
        return ReplaySplit(True, tuple(train.tolist()), tuple(replay.tolist()), trace_start)

    def routing_model(self) -> str:
        from moeless_cli.sim.presets import get_preset

        return self.model or get_preset(self.preset).routing_model

    def profile_request(self) -> ProfileRequest:
        """The profile stage: the routing model on the prompts, every token's router input kept."""
        from moeless_cli.jobs.profile import ProfileRequest
        from moeless_cli.profiling.runner import ProfileOptions

        prompts = self.num_prompts * (1 if self.in_sample else 2)  # held out: as many again to replay (real mode
        # records them too, so that its profile is the simulated runs' cached one)
        options = ProfileOptions(num_prompts=prompts, batch_size=16, max_new_tokens=self.max_new_tokens,
                                 max_prompt_tokens=self.max_prompt_tokens, router_samples=1_000_000, seed=0)
        return ProfileRequest(model=self.routing_model(), dataset=self.dataset, options=options,
                              out=self.out / "profile", force=True)  # the bench folder's own cached stage

    def train_request(self, split: ReplaySplit | None = None) -> TrainRequest:
        """The predictor stage: d = 1 predictors on the profile's training requests (all: no split given)."""
        from moeless_cli.jobs.predictor import TrainRequest

        return TrainRequest(profiles=[self.out / "profile"], distances=[1], accuracy_threshold=0.8,
                            epochs=self.epochs, out=self.out / "predictor.safetensors", seed=0,
                            requests=split.train_requests if split is not None and split.held_out else None)

    def plan_request(self, slots: int, budget: int) -> PlanRequest:
        """The plan stage: ilp within `slots` per GPU per layer, then spare replicas up to `budget` per layer."""
        from moeless_cli.jobs.plan import PlanRequest

        return PlanRequest(gpus=self.gpus, slots_per_gpu=slots, replica_budget=budget, spares=True, solver="ilp",
                           time_limit=self.plan_seconds,
                           out=self.out / f"plan-{self.preset}-{self.hardware}-{self.gpus}.json")


@dataclass(frozen=True)
class ReplaySplit:
    """What the learners (plan, spares, EPLB's first plan, predictors) see and what is replayed."""

    held_out: bool  # False: --in-sample, the learners see the replayed requests themselves
    train_requests: tuple[int, ...]  # profile request ids the learners see
    replay_requests: tuple[int, ...]  # profile request ids whose recorded routing is replayed
    trace_start: int  # first trace request replayed (the requests before it are the learners' window)

    def as_dict(self, replayed: int) -> dict[str, Any]:
        """setting.split of bench --json; replayed: trace requests actually replayed."""
        return {
            "kind": "held-out" if self.held_out else "in-sample",
            "training_requests": list(self.train_requests), "replay_requests": list(self.replay_requests),
            "trace_training_window": [0, self.trace_start], "trace_replay_window": [self.trace_start,
                                                                                  self.trace_start + replayed],
            "note": (f"plan, spares, EPLB's first plan and predictors learn from {len(self.train_requests)} "
                     f"profiled requests' routing, the replay plays {len(self.replay_requests)} others; it replays "
                     f"trace requests {self.trace_start}-{self.trace_start + replayed - 1}, after the learners' "
                     "window (no learner reads arrivals today)" if self.held_out else
                     "in-sample (--in-sample): the learners saw the replayed requests' routing"),
        }


def trace_window(trace: Any, start: int) -> Any:
    """The requests of a workloads Trace from index start on, arrivals shifted to begin at 0."""
    from moeless_cli.workloads.traces import Trace

    arrival = trace.arrival_s[start:]
    return Trace(trace.name, arrival - (arrival[0] if arrival.size else 0.0), trace.input_tokens[start:],
                 trace.output_tokens[start:])


@dataclass(frozen=True)
class BenchResult:
    mode: str  # "sim" or "real"
    setting: dict[str, Any]  # the cluster, model, trace and options the systems ran on
    systems: dict[str, dict[str, Any]]  # system -> serve's JSON core
    ratios: dict[str, dict[str, float | None]]  # system -> its MoE latency and cost over the baselines'
    stages: dict[str, dict[str, Any]]  # stage -> where it is and whether it was reused
    moe_layer_s: dict[str, np.ndarray]  # system -> MoE-layer seconds (the latency CDF; not in the JSON)
    simulator_check: dict[str, Any] | None = None  # real mode: the simulator against the measured runs
    pareto: dict[str, Any] | None = None  # sim mode: the latency-memory sweep ({"iterations", "systems", "rows"})
    ablation: list[dict[str, Any]] | None = None  # sim mode with --ablation: one row per moeless variant
    timeline: dict[str, Any] | None = None  # sim mode: live replicas over time and arrivals (bench/timeline.py)
    files: tuple[Path, ...] = ()  # bench.json, report.md and the plots, once written

    def core(self) -> dict[str, Any]:
        """bench.json: everything but the files and the raw latencies."""
        doc = {"mode": self.mode, "setting": self.setting, "systems": self.systems, "ratios": self.ratios,
               "stages": self.stages}
        if self.pareto is not None:
            doc["pareto"] = self.pareto
        if self.ablation is not None:
            doc["ablation"] = self.ablation
        if self.timeline is not None:
            doc["timeline"] = self.timeline
        return doc if self.simulator_check is None else doc | {"simulator_check": self.simulator_check}

    def to_json(self) -> dict[str, Any]:
        return self.core() | {"files": [str(f) for f in self.files]}
