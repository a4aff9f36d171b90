"""The plan job: loads in, a plan file (replica counts, placement, token shares) and its metrics out.

`plan` reads the loads (a profile or a CSV, or a PlanSource given in memory, as bench does), turns
GPU memory into replica slots, solves, optionally fills spare replicas where sample batches of the
routing straggle, scores the plan and writes it.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from moeless_cli.errors import MoelessError, require_choice

if TYPE_CHECKING:
    import numpy as np

    from moeless_cli.planning import PlanningProblem, SolveResult
    from moeless_cli.planning.plan import Plan

BACKENDS = ("cbc", "highs")
ROW_METRICS = ("imbalance_after", "replicas", "gap", "lower_bound", "status", "moved")  # kept in the plan file


@dataclass(frozen=True)
class PlanRequest:
    gpus: int | None  # expert-parallel GPUs to plan for (required)
    profile: Path | None = None  # profile directory: loads summed over its iterations
    loads: Path | None = None  # or a CSV with columns layer,expert,count
    where: tuple[str, ...] = ()  # COLUMN=VALUE filters of the CSV's rows
    nodes: int = 1  # nodes the GPUs are spread over
    groups: int = 1  # the model's expert groups (DeepSeek-V3: 8); eplb packs whole groups onto nodes
    gpu_memory_gb: float | None = None  # memory per GPU for experts (with expert_mb: the slots)
    expert_mb: float | None = None  # one expert's weights, MB; None: the profiled model's
    slots_per_gpu: int | None = None  # replicas a GPU holds per layer (instead of the memory)
    replica_budget: int | None = None  # most replicas per layer (joint: in all)
    joint: bool = False  # share the budgets across layers: skewed layers get more
    spares: bool = False  # fill unused slots with share-0 replicas where sample batches straggle
    previous_plan: Path | None = None  # the plan now loaded: moving away from it costs
    solver: str = "ilp"  # ilp, eplb, moeless-paper or static
    backend: str = "cbc"  # ILP backend: cbc or highs
    time_limit: float = 60.0  # seconds for the whole solve (ilp)
    intra_gbps: float = 450.0  # GPU-GPU bandwidth inside a node, GB/s
    inter_gbps: float = 50.0  # bandwidth between nodes, GB/s
    out: Path | None = None  # plan file; None: plans/<source>-<solver>-g<G>.json

    def validate(self) -> None:
        from moeless_cli.planning import SOLVERS

        if self.gpus is None:
            raise MoelessError("--gpus is required (expert-parallel GPUs to plan for)")
        require_choice("--solver", self.solver, SOLVERS)
        if self.backend not in BACKENDS:
            raise MoelessError(f"unknown --backend {self.backend!r}; choose cbc or highs")
        if self.backend == "highs":
            import importlib.util

            if importlib.util.find_spec("highspy") is None:
                raise MoelessError("--backend highs needs the highspy package (pip install highspy); or use cbc")
        self._check_numbers()
        if self.gpus % self.nodes:
            raise MoelessError(f"--gpus ({self.gpus}) must be a positive multiple of --nodes ({self.nodes})")
        if self.spares and self.joint:
            raise MoelessError("--spares fills each layer's own slots; it does not combine with --joint")

    def _check_numbers(self) -> None:
        """Every numeric option: right type, finite, within what a plan can address (checks.py)."""
        from moeless_cli.checks import MAX_EXPERTS, MAX_GPUS, MAX_NODES, MAX_SECONDS
        from moeless_cli.checks import integer, number, optional_integer, optional_number

        integer("--gpus", self.gpus, 1, MAX_GPUS)
        integer("--nodes", self.nodes, 1, MAX_NODES)
        integer("--groups", self.groups, 1, MAX_EXPERTS)
        optional_number("--gpu-memory-gb", self.gpu_memory_gb, high=1e6, positive=True)
        optional_number("--expert-mb", self.expert_mb, high=1e9, positive=True)
        optional_integer("--slots-per-gpu", self.slots_per_gpu, 1, MAX_EXPERTS)
        optional_integer("--replica-budget", self.replica_budget, 1, MAX_GPUS * MAX_EXPERTS)
        number("--time-limit", self.time_limit, high=MAX_SECONDS, positive=True)
        number("--intra-node-gbps", self.intra_gbps, high=1e9, positive=True)
        number("--inter-node-gbps", self.inter_gbps, high=1e9, positive=True)


@dataclass(frozen=True)
class PlanSource:
    """The loads to plan for and where they came from."""

    load: np.ndarray  # [layers, experts] tokens per expert
    name: str  # names the default plan file
    origin: dict[str, Any]  # {"profile"} or {"loads", "where"}: the plan file's "source"
    model_id: str | None = None  # the profiled model
    config_hash: str | None = None  # its config hash
    expert_bytes: float | None = None  # one expert's weights, bytes (recorded profiles)
    moe_layer_ids: list[int] | None = None  # the model's layer index of each MoE layer
    spare_batches: np.ndarray | None = None  # [batches, layers, experts] sample batches of the routing, for spares

    def fingerprint(self) -> str:
        """What a plan is solved from: a hash of the loads and the spare batches."""
        return _sha16(self.load, *([] if self.spare_batches is None else [self.spare_batches]))


def _sha16(*arrays: np.ndarray) -> str:
    """The first 16 hex digits of the sha256 of the arrays' bytes."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class LayerReport:
    layer: int  # MoE layer index
    imbalance_before: float  # busiest GPU / mean under static EP
    imbalance_after: float  # ... under the plan
    replicas: int  # replicas the plan runs
    gap: float  # relative gap to the proven lower bound
    status: str  # optimal, feasible or heuristic
    method: str  # what produced the layer's plan
    max_load: float  # tokens on the busiest GPU
    lower_bound: float  # proven lower bound on max_load
    moved: int  # replicas moved from the previous plan
    move_seconds: float  # time those moves take
    time_s: float  # MoE time of one step under the alpha/beta model
    cost_gbs: float  # memory x time
    seconds: float  # solver time on this layer
    straggle_before_spares: float | None = None  # busiest GPU / ceil(T / G) over sample batches, optimal split
    straggle_after_spares: float | None = None  # ... with the spare replicas

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if not k.startswith("straggle_")}
        if self.straggle_before_spares is not None:
            doc |= {"batch_straggle_before_spares": self.straggle_before_spares,
                    "batch_straggle_after_spares": self.straggle_after_spares}
        return doc


@dataclass(frozen=True)
class PlanResult:
    out: Path  # the plan file written
    solver: str  # the solver that made it
    solve_seconds: float  # solve + spares wall time
    num_gpus: int
    num_nodes: int
    num_layers: int
    num_experts: int
    layers: list[LayerReport]  # one per MoE layer
    plan: Plan = field(repr=False)  # the plan itself

    def to_json(self) -> dict[str, Any]:
        rows = [r.to_json() for r in self.layers]
        return {
            "out": str(self.out), "solver": self.solver, "solve_seconds": self.solve_seconds,
            "num_gpus": self.num_gpus, "num_nodes": self.num_nodes, "num_layers": self.num_layers,
            "num_experts": self.num_experts, "layers": rows,
            "max_imbalance_after": max(r["imbalance_after"] for r in rows),
            "max_gap": max(r["gap"] for r in rows),
            "replicas": sum(r["replicas"] for r in rows),
            "moved": sum(r["moved"] for r in rows),
            "time_s": sum(r["time_s"] for r in rows),  # MoE time of one step under the alpha/beta model
            "cost_gbs": sum(r["cost_gbs"] for r in rows),
        }


@dataclass(frozen=True)
class PlanProgress:
    """What a caller hears while the plan is made (a progress bar, bench's status line)."""

    start: Callable[[str, int], None] = lambda description, layers: None  # solving starts: (what, layers)
    layer_done: Callable[[], None] = lambda: None  # one more layer solved
    say: Callable[[str], None] = lambda description: None  # the next step


def read_source(request: PlanRequest) -> PlanSource:
    """The request's loads: a profile (its routing sampled into spare batches when asked) or a CSV."""
    if (request.profile is None) == (request.loads is None):
        raise MoelessError("give exactly one of --profile DIR or --loads FILE.csv")
    if request.loads is not None:
        return _read_csv(Path(request.loads), request.where, request.spares)
    if request.where:
        raise MoelessError("--where filters apply to --loads CSV files only")
    return _read_profile(Path(request.profile), request.spares)


def _read_csv(path: Path, where: tuple[str, ...], spares: bool) -> PlanSource:
    from moeless_cli.loads_csv import parse_where, read_loads_csv

    filters = parse_where(list(where))
    load = read_loads_csv(path, filters)
    if spares:
        _no_routing()
    return PlanSource(load=load, name="-".join([path.stem, *filters.values()]),
                      origin={"loads": str(path), "where": filters})


def _no_routing() -> None:
    raise MoelessError("--spares needs a --profile with per-token routing (record one with `moeless profile`); "
                       "a --loads CSV or an imported profile has only counts")


def _read_profile(path: Path, spares: bool) -> PlanSource:
    import numpy as np

    from moeless_cli.planning.spares import sample_token_batches
    from moeless_cli.profiling import load_profile

    prof = load_profile(path)
    batches = None
    if spares:
        if prof.topk_ids is None or prof.token_request is None or prof.token_phase is None:
            _no_routing()
        batches = sample_token_batches(prof.topk_ids, prof.token_request, prof.token_phase, prof.num_experts)
    return PlanSource(load=np.asarray(prof.layer_load(), dtype=np.float64), name=path.name, origin={"profile": str(path)},
                      model_id=prof.model_id, config_hash=prof.config_hash,
                      expert_bytes=prof.manifest.get("expert_bytes"), moe_layer_ids=prof.moe_layer_ids,
                      spare_batches=batches)


def replica_slots(num_layers: int, num_experts: int, request: PlanRequest,
                  expert_mb: float | None) -> tuple[int | None, int | None]:
    """(slots per GPU per layer, joint: slots per GPU over all layers), from --slots-per-gpu or from
    --gpu-memory-gb / the expert size; None where the solver's default applies."""
    gpus, memory_gb, slots_per_gpu, joint = request.gpus, request.gpu_memory_gb, request.slots_per_gpu, request.joint
    if slots_per_gpu is not None and memory_gb is not None:
        raise MoelessError("give either --slots-per-gpu or --gpu-memory-gb with --expert-mb, not both")
    if slots_per_gpu is not None:
        if slots_per_gpu < 1:
            raise MoelessError("--slots-per-gpu must be at least 1")
        slots_per_gpu = min(slots_per_gpu, num_experts)  # a GPU holds at most one replica of each expert
        return slots_per_gpu, (slots_per_gpu * num_layers if joint else None)
    if memory_gb is None:
        return None, None
    if expert_mb is None or expert_mb <= 0 or memory_gb <= 0:
        raise MoelessError("--gpu-memory-gb needs a positive --expert-mb (size of one expert's weights)")
    # Replicas a GPU holds over all layers; more than one of each expert per layer is never usable.
    total = int(min(memory_gb * 1024 // expert_mb, num_layers * num_experts))
    need = num_layers * math.ceil(num_experts / gpus)
    if total < need:
        missing_gb = (need * expert_mb - memory_gb * 1024) / 1024
        raise MoelessError(
            f"experts do not fit: {num_layers} layers x {num_experts} experts on {gpus} GPUs need "
            f"{need * expert_mb / 1024:.2f} GB per GPU, {missing_gb:.2f} GB more than --gpu-memory-gb {memory_gb:g}"
        )
    return (None, total) if joint else (total // num_layers, None)


def _expert_mb(request: PlanRequest, source: PlanSource) -> float | None:
    if request.expert_mb is None and source.expert_bytes:
        return float(source.expert_bytes) / 2**20  # the profiled model's expert size
    return request.expert_mb


def _problem(request: PlanRequest, source: PlanSource, expert_mb: float | None) -> PlanningProblem:
    from moeless_cli.plan_io import read_plan
    from moeless_cli.planning import PlanningProblem

    num_layers, num_experts = source.load.shape
    per_layer, total_slots = replica_slots(num_layers, num_experts, request, expert_mb)
    previous = read_plan(request.previous_plan)[0] if request.previous_plan is not None else None
    return PlanningProblem(
        num_gpus=request.gpus, num_nodes=request.nodes, num_groups=request.groups, slots_per_gpu=per_layer,
        replica_budget=request.replica_budget, joint=request.joint, total_slots_per_gpu=total_slots,
        previous=previous, expert_bytes=(expert_mb or 0.0) * 2**20, intra_node_gbps=request.intra_gbps,
        inter_node_gbps=request.inter_gbps, time_limit_s=request.time_limit, backend=request.backend,
    )


def _solve(request: PlanRequest, source: PlanSource, problem: PlanningProblem,
           progress: PlanProgress) -> tuple[SolveResult, list[tuple[float, float]] | None]:
    """Solve, then add spare replicas when asked; returns (result, per layer (straggle before, after) or None)."""
    from moeless_cli.planning import solve
    from moeless_cli.planning.spares import fill_plan_spares, straggle_per_layer

    num_layers, num_experts = source.load.shape
    progress.start(f"planning ({request.solver})", num_layers)
    result = solve(request.solver, source.load, problem, on_layer=lambda i: progress.layer_done())
    if not request.spares:
        return result, None
    batches = source.spare_batches
    assert batches is not None, "read_source samples spare batches whenever spares are asked for"
    progress.say("spare replicas")
    before = straggle_per_layer(result.plan, batches)
    result.plan = fill_plan_spares(result.plan, batches, problem.slots_for(num_experts),
                                   problem.max_replicas(num_experts))
    return result, list(zip(before, straggle_per_layer(result.plan, batches)))


def _layer_reports(request: PlanRequest, source: PlanSource, problem: PlanningProblem, result: SolveResult,
                   straggle: list[tuple[float, float]] | None, expert_mb: float | None) -> list[LayerReport]:
    from moeless_cli.planning.metrics import CostModel, imbalance, plan_metrics, static_gpu_loads
    from moeless_cli.planning.topology import build_topology, pair_seconds_per_gb

    load, gpus = source.load, request.gpus
    pair_cost = pair_seconds_per_gb(build_topology(gpus, request.nodes, request.intra_gbps, request.inter_gbps))
    cost = CostModel(expert_gb=(expert_mb or 0.0) / 1024)
    metrics = plan_metrics(result.plan, load, cost, problem.previous, pair_cost)
    return [
        LayerReport(
            layer=i, imbalance_before=imbalance(static_gpu_loads(load[i], gpus)), imbalance_after=m.imbalance,
            replicas=m.replicas, gap=info.gap, status=info.status, method=info.method, max_load=info.max_load,
            lower_bound=info.lower_bound, moved=m.moved, move_seconds=m.move_seconds, time_s=m.time_s,
            cost_gbs=m.cost_gbs, seconds=info.seconds,
            straggle_before_spares=None if straggle is None else straggle[i][0],
            straggle_after_spares=None if straggle is None else straggle[i][1],
        )
        for i, (info, m) in enumerate(zip(result.infos, metrics))
    ]


def _plan_file_extra(request: PlanRequest, source: PlanSource, result: PlanResult) -> dict[str, Any]:
    """What the plan file records beside the plan: how it was made and from what."""
    return {
        "solver": request.solver,
        "num_nodes": request.nodes,
        "num_groups": request.groups,
        "topology": {"intra_node_gbps": request.intra_gbps, "inter_node_gbps": request.inter_gbps},
        "slots_per_gpu": [int(layer.slots_used(request.gpus).max()) for layer in result.plan.layers],
        "model_id": source.model_id,
        "config_hash": source.config_hash,
        "moe_layer_ids": source.moe_layer_ids,
        "loads_hash": _sha16(source.load),
        "source": source.origin,
        "spares": request.spares,
        "solve_seconds": result.solve_seconds,
        "metrics": [{k: r[k] for k in ROW_METRICS} for r in result.to_json()["layers"]],
    }


def plan(request: PlanRequest, source: PlanSource | None = None, progress: PlanProgress = PlanProgress()) -> PlanResult:
    """Solve expert scaling and placement for the request's loads (or `source`'s) and write the plan file."""
    from moeless_cli.fileio import output_file
    from moeless_cli.plan_io import write_plan

    request.validate()
    if source is None:
        source = read_source(request)
    expert_mb = _expert_mb(request, source)
    problem = _problem(request, source, expert_mb)
    out = Path(request.out or Path("plans") / f"{source.name}-{request.solver}-g{request.gpus}.json")
    output_file(out, "--out", inputs=[request.loads])  # before the solve, not after
    start = time.perf_counter()
    solved, straggle = _solve(request, source, problem, progress)
    seconds = time.perf_counter() - start
    num_layers, num_experts = source.load.shape
    result = PlanResult(out=out, solver=request.solver, solve_seconds=seconds, num_gpus=request.gpus,
                        num_nodes=request.nodes, num_layers=num_layers, num_experts=num_experts,
                        layers=_layer_reports(request, source, problem, solved, straggle, expert_mb), plan=solved.plan)
    write_plan(out, result.plan, _plan_file_extra(request, source, result))
    return result
