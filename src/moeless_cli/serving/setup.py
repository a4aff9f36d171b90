"""Everything `serve` checks and builds before any weights move: options, plan, predictor, workload."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.online.batching import BATCHING

BACKENDS = ("local", "dist")
DEFAULT_WORKERS = 4  # expert-parallel workers when neither --workers nor a plan gives the count (both backends)


@dataclass
class ServeOptions:
    model: str  # built-in name or checkpoint directory
    plan: Path | None = None  # moeless.plan/v1 file (replicas, placement, shares)
    predictor: Path | None = None  # train-predictor output
    profile: Path | None = None  # a profile of this model: the policies' starting load history
    policy: str = "moeless"  # one of online.policies.ONLINE_POLICIES
    backend: str = "local"  # local: one process; dist: torchrun, one process per worker
    devices: tuple[str, ...] = ("cpu",)  # local workers go round-robin over these
    workers: int | None = None  # expert-parallel workers; None: the plan's GPU count, else DEFAULT_WORKERS
    dataset: str = "mix"  # prompt dataset (built-in name or a file)
    trace: str = "azure-conv"  # arrival trace (built-in name or CSV/JSONL)
    time_scale: float = 1.0  # > 1 compresses the trace's time
    max_requests: int | None = 16  # first N requests of the trace
    max_output_tokens: int | None = 16  # caps the trace's output lengths (CPU runs)
    max_prompt_tokens: int | None = 64  # caps prompt lengths (the trace's input length is the other cap)
    token_budget: int = 256  # tokens per iteration (continuous batching)
    max_batch: int = 8  # requests running at once
    batching: str = "continuous"  # continuous, or the paper's one-second batches
    keep_alive_s: float = 10.0  # idle seconds before an unpinned replica is reclaimed
    gpu_price_per_hour: float = 2.0  # USD per GPU-hour for the cost figures
    distance: int = 1  # predict layer l + d while layer l runs
    dtype: str | None = None  # model dtype (default float32 on CPU)
    record_layers: bool = False  # keep every MoE layer call's per-worker rows, replicas and seconds (calibration)
    expert_memory_mb: float | None = None  # most MiB of expert replicas one worker holds (all layers); None: no cap
    nnodes: int = 1  # dist: machines (torchrun agents) the workers are split over, workers / nnodes each
    node_rank: int = 0  # dist: this machine's index; node 0 hosts the rendezvous
    rdzv_endpoint: str | None = None  # dist with nnodes > 1: HOST:PORT of node 0's rendezvous
    heartbeat_timeout_s: float = 5.0  # dist: a rank silent this long (dead or stopped) is replaced

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON object (paths as strings): the dist ranks' input and the report's echo."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ServeOptions":
        """Inverse of `to_json`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        for key in ("plan", "predictor", "profile"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if "devices" in values:
            values["devices"] = tuple(values["devices"])
        return cls(**values)


def check_options(o: ServeOptions) -> None:
    """Choices and every numeric option (checks.py): right type, finite, within bounds."""
    from moeless_cli.checks import MAX_COUNT, MAX_GPUS, MAX_LAYERS, MAX_SECONDS, MAX_TOKENS
    from moeless_cli.checks import integer, number, optional_integer
    from moeless_cli.online.policies import ONLINE_POLICIES

    require_choice("--policy", o.policy, ONLINE_POLICIES)
    require_choice("--backend", o.backend, BACKENDS)
    require_choice("--batching", o.batching, BATCHING)
    optional_integer("--workers", o.workers, 1, MAX_GPUS)
    for name, value, high in (("--token-budget", o.token_budget, MAX_TOKENS), ("--max-batch", o.max_batch, 1 << 16),
                              ("--distance", o.distance, MAX_LAYERS)):
        integer(name, value, 1, high)
    for name, value, high in (("--max-output-tokens", o.max_output_tokens, MAX_TOKENS),
                              ("--max-prompt-tokens", o.max_prompt_tokens, MAX_TOKENS),
                              ("--max-requests", o.max_requests, MAX_COUNT)):
        optional_integer(name, value, 1, high)
    number("--time-scale", o.time_scale, high=None, positive=True)
    number("--keep-alive", o.keep_alive_s, 0.0, MAX_SECONDS)
    number("--gpu-price-per-hour", o.gpu_price_per_hour, 0.0, 1e6)
    check_dist_options(o)


def check_dist_options(o: ServeOptions) -> None:
    """The expert-memory cap and the multi-node, heartbeat options (one-line errors, checks.py)."""
    from moeless_cli.checks import MAX_FLOAT, MAX_NODES, integer, number

    if o.expert_memory_mb is not None:
        number("--expert-memory-mb", o.expert_memory_mb, high=MAX_FLOAT, positive=True)
    number("--heartbeat-timeout", o.heartbeat_timeout_s, 0.5, 3600.0)
    integer("--nnodes", o.nnodes, 1, MAX_NODES)
    integer(f"--node-rank (of --nnodes {o.nnodes})", o.node_rank, 0, o.nnodes - 1)
    if o.nnodes > 1 and o.backend != "dist":
        raise MoelessError("--nnodes > 1 needs --backend dist")
    if o.nnodes > 1 and parse_endpoint(o.rdzv_endpoint) is None:
        raise MoelessError(f"--nnodes {o.nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address), "
                           f"got {o.rdzv_endpoint!r}")


def parse_endpoint(endpoint: str | None) -> tuple[str, int] | None:
    """HOST:PORT -> (host, port), None when it is not one."""
    host, _, port = (endpoint or "").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


@dataclass
class CheckedInputs:
    config_hash: str  # the model's config hash; plans, predictors and profiles must match it
    plan: Any  # planning.plan.Plan read from --plan, or None
    workers: int  # expert-parallel workers: --workers, else the plan's GPU count, else DEFAULT_WORKERS
    trace: Any  # workloads.traces.Trace read from --trace (checked; the workload is built from it)


def check_inputs(o: ServeOptions, launcher: bool = False) -> CheckedInputs:
    """Everything checkable before any weights load, for both backends: the options, the trace, the
    predictor and plan against the model's config (no weights read), and the worker count.

    launcher: the dist launcher also needs one visible GPU per worker on CUDA (a rank sees only
    its own node's GPUs, so the ranks skip this).
    """
    from moeless_cli.models.loading import config_hash, read_model_config, resolve_model_path
    from moeless_cli.workloads.traces import load_trace

    check_options(o)
    trace = load_trace(o.trace, time_scale=o.time_scale, max_requests=o.max_requests)  # fails before loading
    chash = config_hash(read_model_config(resolve_model_path(o.model)))
    if o.predictor is not None:
        check_predictor(o.predictor, chash, o.distance)
    plan = check_plan_cheaply(o.plan, chash, o.workers) if o.plan is not None else None
    workers = o.workers or (plan.num_gpus if plan is not None else DEFAULT_WORKERS)
    if launcher and workers % o.nnodes:
        raise MoelessError(f"--workers {workers} cannot be split evenly over --nnodes {o.nnodes}")
    if launcher and any(d.startswith("cuda") for d in o.devices):
        import torch

        if torch.cuda.device_count() < workers // o.nnodes:
            raise MoelessError(f"--backend dist with CUDA needs one GPU per worker: {workers // o.nnodes} workers, "
                               f"{torch.cuda.device_count()} GPUs visible" + (" on this node" if o.nnodes > 1 else ""))
    return CheckedInputs(chash, plan, workers, trace)


def check_plan_cheaply(plan_path: Path, config_hash: str, workers: int | None) -> Any:
    """Before loading anything: refuse a plan made for another model (config hash) or for more GPUs
    than there are workers. Returns the plan."""
    from moeless_cli.plan_io import read_plan

    plan, doc = read_plan(plan_path)
    made_for = doc.get("config_hash")
    if made_for is not None and made_for != config_hash:
        raise MoelessError(
            f"plan {plan_path} was made for model {doc.get('model_id')} (config hash {made_for}), not for this "
            f"model (config hash {config_hash}); plan again from a profile of this model"
        )
    if workers is not None and plan.num_gpus > workers:
        raise MoelessError(
            f"plan {plan_path} places replicas on {plan.num_gpus} GPUs but only {workers} workers are available "
            f"(--workers {workers}); give --workers {plan.num_gpus} or plan for {workers} GPUs"
        )
    return plan


def check_plan_shape(plan: Any, plan_path: Path, num_layers: int, num_experts: int) -> None:
    """After loading the model: the plan (from check_plan_cheaply) against its MoE layers and experts."""
    if plan.num_experts != num_experts or plan.num_layers != num_layers:
        raise MoelessError(
            f"plan {plan_path} has {plan.num_layers} layers x {plan.num_experts} experts; this model has "
            f"{num_layers} MoE layers x {num_experts} experts"
        )


def check_predictor(path: Path, config_hash: str, distance: int) -> None:
    """Refuse a predictor trained for another model (reading only its manifest), then one whose
    fields or tensors are broken, or that has no model at `distance` (it would never predict)."""
    from moeless_cli.predictor.store import load_predictor, read_manifest

    manifest = read_manifest(path)
    if manifest.get("config_hash") != config_hash:
        raise MoelessError(
            f"predictor {path} was trained for model {manifest.get('model_id')} (config hash "
            f"{manifest.get('config_hash')}), not for this model (config hash {config_hash})"
        )
    distances = load_predictor(path, config_hash).distances
    if distance not in distances:
        raise MoelessError(f"--distance {distance}: predictor {path} predicts {', '.join(map(str, distances))} "
                           f"layer(s) ahead; give one of those, or train with `train-predictor --distance {distance}`")


def slots_per_gpu(num_experts: int, workers: int, plan: Any) -> int:
    """Replicas a worker may hold per layer: room for E + G - 1 replicas, or what the plan uses."""
    from moeless_cli.planning.plan import balanced_slots_per_gpu

    slots = balanced_slots_per_gpu(num_experts, workers)
    if plan is not None:
        slots = max(slots, max(int(layer.slots_used(workers).max()) for layer in plan.layers))
    return slots


def capped_slots_per_gpu(num_experts: int, workers: int, plan: Any, memory_mb: float | None,
                         replica_bytes: int) -> int:
    """`slots_per_gpu`, capped by --expert-memory-mb: replica_bytes is one expert over all MoE layers."""
    slots = slots_per_gpu(num_experts, workers, plan)
    if memory_mb is None:
        return slots
    cap = expert_slot_cap(memory_mb, replica_bytes)
    planned = max(int(layer.slots_used(workers).max()) for layer in plan.layers) if plan is not None else 0
    if planned > cap:
        raise MoelessError(f"the plan puts {planned} replicas of a layer on one worker; --expert-memory-mb "
                           f"{memory_mb:g} holds {cap}")
    if cap * workers < num_experts:
        raise MoelessError(
            f"{num_experts} experts ({replica_bytes / 2**20:.2f} MiB each over all layers) do not fit in {workers} "
            f"worker(s) x --expert-memory-mb {memory_mb:g} ({cap} per worker): give at least "
            f"{-(-num_experts // max(cap, 1))} workers or more memory")
    return min(slots, cap)


def expert_slot_cap(memory_mb: float, replica_bytes: int) -> int:
    """Replicas per layer that fit in memory_mb MiB when each takes replica_bytes over all layers."""
    return int(memory_mb * 2**20 // max(replica_bytes, 1))


@dataclass
class Workload:
    requests: list[Any]  # online.batching.Request, in arrival order
    prompts: dict[int, list[int]]  # request id -> prompt token ids


def build_workload(o: ServeOptions, tokenizer: Any, trace: Any = None) -> Workload:
    """Prompts from the dataset, arrivals and lengths from the trace (capped for CPU runs); trace:
    the one `check_inputs` read, else --trace is read here."""
    from moeless_cli.online.batching import Request
    from moeless_cli.workloads.prompts import load_prompts, render_prompt
    from moeless_cli.workloads.traces import load_trace

    if tokenizer is None:
        raise MoelessError(f"model {o.model} ships no tokenizer: serve needs one to encode the dataset's prompts")
    if trace is None:
        trace = load_trace(o.trace, time_scale=o.time_scale, max_requests=o.max_requests)
    prompt_set = load_prompts(o.dataset, num_prompts=min(len(trace), 10_000))
    requests, prompts = [], {}
    for i in range(len(trace)):
        text = render_prompt(prompt_set.prompts[i % len(prompt_set)], tokenizer)
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        limit = int(trace.input_tokens[i]) if trace.input_tokens[i] > 0 else len(ids)
        if o.max_prompt_tokens is not None:
            limit = min(limit, o.max_prompt_tokens)
        ids = ids[: max(1, limit)] or [tokenizer.bos_token_id or 0]
        out = max(1, int(trace.output_tokens[i]))
        if o.max_output_tokens is not None:
            out = min(out, o.max_output_tokens)
        prompts[i] = ids
        requests.append(Request(i, float(trace.arrival_s[i]), len(ids), out))
    return Workload(requests, prompts)


def load_history(profile: Path | None, config_hash: str, num_layers: int, num_experts: int) -> np.ndarray:
    """The policies' starting history [layers, experts]: a profile's summed loads, else flat."""
    if profile is None:
        return np.ones((num_layers, num_experts), dtype=np.float64)
    from moeless_cli.profiling import load_profile

    prof = load_profile(profile)
    if prof.config_hash is not None and prof.config_hash != config_hash:
        raise MoelessError(f"profile {profile} was recorded on model {prof.model_id} (config hash {prof.config_hash}), "
                           f"not on this model (config hash {config_hash})")
    history = np.asarray(prof.load, dtype=np.float64).sum(axis=0)  # [layers, experts]
    if history.shape != (num_layers, num_experts):
        raise MoelessError(f"profile {profile} has loads for {history.shape[0]} layers x {history.shape[1]} experts; "
                           f"this model has {num_layers} x {num_experts}")
    return history
