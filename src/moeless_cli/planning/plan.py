"""The plan and the problem: the dataclasses every solver takes and returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def balanced_slots_per_gpu(num_experts: int, num_gpus: int) -> int:
    """Slots per GPU per layer that hold E + G - 1 replicas, what perfect balance needs at most with
    unequal shares: ceil((E + G - 1) / G)."""
    return math.ceil((num_experts + num_gpus - 1) / num_gpus)


def replica_cap(num_gpus: int, slots_per_gpu: int, budget: int | None) -> int:
    """Replicas one layer may hold: all its slots, capped by a replica budget (None: no cap)."""
    cap = num_gpus * slots_per_gpu
    return cap if budget is None else min(cap, budget)


@dataclass
class LayerPlan:
    """The replicas of one MoE layer; three parallel arrays, one entry per replica."""

    expert: np.ndarray  # [replicas] int64, logical expert of each replica
    gpu: np.ndarray  # [replicas] int64, GPU holding each replica
    share: np.ndarray  # [replicas] float64, fraction of its expert's tokens; sums to 1 per expert

    @classmethod
    def from_lists(cls, expert: list[int], gpu: list[int], share: list[float]) -> "LayerPlan":
        return cls(
            np.asarray(expert, dtype=np.int64),
            np.asarray(gpu, dtype=np.int64),
            np.asarray(share, dtype=np.float64),
        )

    @property
    def num_replicas(self) -> int:
        return int(self.expert.size)

    def gpu_loads(self, load: np.ndarray, num_gpus: int) -> np.ndarray:
        """load: [experts] tokens of this layer. Returns [num_gpus] tokens each GPU serves."""
        return np.bincount(self.gpu, weights=self.share * load[self.expert], minlength=num_gpus)

    def replica_counts(self, num_experts: int) -> np.ndarray:
        """Returns [experts] number of replicas of each logical expert."""
        return np.bincount(self.expert, minlength=num_experts)

    def slots_used(self, num_gpus: int) -> np.ndarray:
        """Returns [num_gpus] replicas held by each GPU."""
        return np.bincount(self.gpu, minlength=num_gpus)


@dataclass
class Plan:
    """Replica counts, placement and token shares for every MoE layer."""

    num_gpus: int  # G, expert-parallel ranks
    num_experts: int  # E, logical experts per layer
    layers: list[LayerPlan]  # one per MoE layer, in layer order

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass
class PlanningProblem:
    """Constraints and options shared by all solvers. Loads come separately ([layers, experts])."""

    num_gpus: int  # G
    num_nodes: int = 1  # N; G % N == 0, GPUs g*N//G share a node
    num_groups: int = 1  # the model's expert groups (DeepSeek-V3 n_group); eplb packs them onto nodes
    slots_per_gpu: int | None = None  # replicas a GPU may hold per layer; None: ceil((E+G-1)/G)
    replica_budget: int | None = None  # most replicas per layer (joint: over all layers); None: no cap
    joint: bool = False  # plan all layers together: extra slots go to the most skewed layers
    total_slots_per_gpu: int | None = None  # joint mode: replicas a GPU may hold over all layers
    previous: Plan | None = None  # placement now loaded; moving away from it costs weight traffic
    expert_bytes: float = 1.0  # bytes of one expert's weights, prices moves
    intra_node_gbps: float = 450.0  # NVLink-class bandwidth inside a node, GB/s
    inter_node_gbps: float = 50.0  # network bandwidth between nodes, GB/s
    time_limit_s: float = 60.0  # wall-clock budget for the whole run, split across layers
    backend: str = "cbc"  # ILP backend: "cbc" (bundled, warm-started) or "highs"
    cv_threshold: float = 0.2  # moeless-paper: stop adding replicas below this CV (paper's V)
    balance_tolerance: float = 1e-6  # relative gap below which a plan counts as optimal

    def slots_for(self, num_experts: int) -> int:
        """Slots per GPU per layer; the default lets E + G - 1 replicas reach perfect balance."""
        if self.slots_per_gpu is not None:
            return self.slots_per_gpu
        return balanced_slots_per_gpu(num_experts, self.num_gpus)

    def max_replicas(self, num_experts: int) -> int:
        """Most replicas one layer may use: all slots, capped by the per-layer budget."""
        return replica_cap(self.num_gpus, self.slots_for(num_experts), None if self.joint else self.replica_budget)

    def node_of(self, gpu: int | np.ndarray) -> int | np.ndarray:
        return gpu // (self.num_gpus // self.num_nodes)


@dataclass
class LayerInfo:
    """What a solver reports about one layer."""

    max_load: float  # tokens on the busiest GPU
    lower_bound: float  # proven lower bound on max_load for this layer's constraints
    status: str  # "optimal" (proven), "feasible", or "heuristic"
    seconds: float  # wall time spent on this layer
    method: str = ""  # what produced the plan (e.g. "greedy", "cbc", "eplb")

    @property
    def gap(self) -> float:
        """Relative optimality gap of max_load: (max_load - lower_bound) / max_load."""
        if self.max_load <= 0:
            return 0.0
        return max(0.0, (self.max_load - self.lower_bound) / self.max_load)


@dataclass
class SolveResult:
    plan: Plan
    infos: list[LayerInfo] = field(default_factory=list)  # one per layer
