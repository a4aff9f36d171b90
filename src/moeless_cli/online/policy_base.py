"""The policy protocol and the base every online policy builds on (the systems: `online/policies.py`).

The `Policy` protocol: what serve's runtime (`serving/runtime.py`, `serving/dist.py`) and the
simulator (`sim/simulator.py`) see of a system. Every system runs through the same loop, per
iteration and layer:
  `prepare(layer, predicted_load, now)`  d layers ahead: make the replicas the layer needs warm
                                          (cold starts begin here; returns the warm set)
  `dispatch(layer, true_load, now)`      after the gate: tokens per replica (+ when it may start)
  `observe(layer, true_load)`            feed history
  `end_iteration(now)`                   keep-alive reclaim, periodic re-planning
and reads these attributes:
  `name`              the system's name in reports
  `lossy`             it changes the model's output (oracle)
  `serverful`         reserves its memory for the whole run: the paper's asymmetric cost proxy
                      (`gbs_proxy`) bills it so, the others per invocation; every system is also
                      billed alike, live and per invocation (`online/report.py`)
  `perfect_balance`   the time model (and serve's gate) spread its work perfectly (oracle)
  `predictor_method`  "paper" / "moeless": the forecasts `prepare` wants; None: no forecast
  `decision_on_host`  its `dispatch` split is computed on the host after the gate (Python per layer:
                      the simulator charges its measured time on the critical path); False: it runs
                      on the device, and `Dispatch.decide_s` carries its modelled kernels (0: the
                      engine's own layout, free)
  `pool`              its expert function instances (`online/functions.py`): what is live, billing
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.online.functions import FunctionPool
from moeless_cli.planning.dispatch import round_split, share_split
from moeless_cli.planning.plan import LayerPlan, Plan, PlanningProblem, replica_cap
from moeless_cli.planning.solvers.static import static_placement


@dataclass
class PolicySetting:
    """What every policy knows about the deployment before serving."""

    num_layers: int  # MoE layers under control
    num_experts: int  # E logical experts per layer
    num_gpus: int  # G
    slots_per_gpu: int  # replicas one GPU may hold per layer (from its memory)
    history: np.ndarray  # [layers, experts] loads seen before serving (the profile)
    entry_tokens: float = 0.0  # work of streaming a replica's weights, in tokens (dispatch cost)
    tile_tokens: int = 1  # a replica's compute is charged in whole row tiles of this many tokens (physical: 64)
    token_s: float = 0.0  # seconds of one token through one expert (turns token-unit costs into seconds)
    kernel_s: float = 0.0  # one small device kernel of a device-side decision (modelled; 0: free)
    counts_collective_s: float = 0.0  # one collective of E integers (the global counts a balanced split needs)
    eplb_window: int = 1000  # EPLB: iterations of history a re-plan looks at
    eplb_period: int = 3000  # EPLB: iterations between re-plans
    cv_threshold: float = 0.2  # moeless-paper: Algorithm 1's V
    dispatch_seed: int = 0  # EPLB: seed of its pseudo-random replica choice per token (runs are reproducible)
    plan: Plan | None = None  # moeless: starting placement; None: water-filling on `history`
    max_new_per_layer: int = 2  # moeless: replicas pre-warmed per layer and iteration at most
    gain_threshold: float = 0.02  # moeless: pre-warm only while the forecast straggles by more
    replica_budget: int | None = None  # most replicas per layer for EPLB (its redundant experts); None: all slots
    serverless_budget: int | None = None  # most live replicas per layer for moeless-paper and moeless;
    # None: all slots (serverless instances scale within memory and are paid for while live)
    dispatch_mode: str = "adaptive"  # moeless, eplb+balanced: device split mode (online/device_dispatch.py MODES)
    pin: str = "base"  # moeless: "base" pins one instance per expert (its plan's largest share), the plan's other
    # replicas start warm and scale in after the keep-alive when idle; "plan" pins the whole plan
    static_start: bool = False  # moeless: start from static EP's placement, not the plan (the ablation of placement)

    def __post_init__(self) -> None:
        if self.num_gpus * self.slots_per_gpu < self.num_experts:
            raise MoelessError(
                f"{self.num_experts} experts do not fit on {self.num_gpus} GPUs x {self.slots_per_gpu} slots per layer"
            )
        if self.history.shape != (self.num_layers, self.num_experts):
            raise MoelessError(f"history must be [{self.num_layers}, {self.num_experts}], got {self.history.shape}")

    def budget(self, serverless: bool) -> int | None:
        return self.serverless_budget if serverless else self.replica_budget

    def problem(self, serverless: bool = False) -> PlanningProblem:
        return PlanningProblem(num_gpus=self.num_gpus, slots_per_gpu=self.slots_per_gpu,
                               cv_threshold=self.cv_threshold, replica_budget=self.budget(serverless))

    def max_replicas(self, serverless: bool = False) -> int:
        """Replicas one layer may hold: all slots, capped by the (serverful or serverless) budget."""
        return replica_cap(self.num_gpus, self.slots_per_gpu, self.budget(serverless))


@dataclass
class Dispatch:
    """One layer's token split: parallel arrays over the replicas that serve it."""

    expert: np.ndarray  # [r] logical expert
    gpu: np.ndarray  # [r] GPU
    tokens: np.ndarray  # [r] float64 tokens each replica serves (sums to the true load per expert; whole when it is)
    start_s: float  # earliest time the layer can run (later than `now` when it waits for a copy)
    decide_s: float = 0.0  # modelled seconds of a device-side decision (kernels, collective); host ones are timed


class Policy(Protocol):
    """What the runtime and the simulator use of a system (see the module docstring)."""

    name: ClassVar[str]
    lossy: ClassVar[bool]
    serverful: ClassVar[bool]
    perfect_balance: ClassVar[bool]
    predictor_method: ClassVar[str | None]
    decision_on_host: ClassVar[bool]
    pool: FunctionPool

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        """predicted_load: [experts] or None. Warm what the layer needs; returns (expert, gpu): [replicas]."""
        ...

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        """true_load: [experts] the gate's token counts. Tokens per replica and when the layer may start."""
        ...

    def observe(self, layer: int, true_load: np.ndarray) -> None:
        """true_load: [experts]. Feed the layer's history."""
        ...

    def end_iteration(self, now: float) -> None:
        """After every iteration: keep-alive reclaim, periodic re-planning."""
        ...


@dataclass
class OnlinePolicy:
    """Base of every `Policy`: a fixed plan, pinned, plan shares. Subclasses override what differs."""

    setting: PolicySetting
    pool: FunctionPool
    plans: list[LayerPlan] = field(default_factory=list)  # current plan per layer
    last_load: list[np.ndarray] = field(default_factory=list)  # latest true load per layer

    # Class attributes (not dataclass fields, so subclasses' values are what instances see).
    name: ClassVar[str] = "static"
    lossy: ClassVar[bool] = False  # changes the model's output
    serverful: ClassVar[bool] = True  # bills reserved memory for the whole run (else per invocation)
    perfect_balance: ClassVar[bool] = False  # the time model spreads its work perfectly (oracle)
    predictor_method: ClassVar[str | None] = None  # "paper" / "moeless": forecasts wanted by prepare()
    decision_on_host: ClassVar[bool] = False  # dispatch's split is host code after the gate (charged by the simulator)

    def initial_plan(self, layer: int) -> LayerPlan:
        return static_placement(self.setting.num_experts, self.setting.num_gpus)

    def start(self, now: float = 0.0) -> None:
        """Load the starting replicas (already in place when serving begins). They stay pinned in
        every system: serverful ones never reclaim, moeless-paper keeps Algorithm 1's starting one
        replica per expert, and moeless's plan is its provisioned floor of warm instances."""
        self.plans = [self.initial_plan(layer) for layer in range(self.setting.num_layers)]
        self.last_load = [np.asarray(row, dtype=np.float64) for row in self.setting.history]
        for layer, plan in enumerate(self.plans):
            self.pool.warm_up(layer, plan.expert, plan.gpu, now, pinned=True, preloaded=True)
            hold_copies(self.pool, layer, plan, now, keep_more=False)

    def forecast(self, layer: int, predicted_load: np.ndarray | None) -> np.ndarray:
        """The predictor's forecast, or the layer's last observed load when there is none."""
        return self.last_load[layer] if predicted_load is None else np.asarray(predicted_load, dtype=np.float64)

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        plan = self.plans[layer]
        return plan.expert, plan.gpu

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        plan = self.plans[layer]
        tokens = share_split(plan.expert, plan.share, np.asarray(true_load, dtype=np.float64))
        return self._finish(layer, plan.expert, plan.gpu, tokens, now, true_load)

    def _finish(self, layer: int, expert: np.ndarray, gpu: np.ndarray, tokens: np.ndarray, now: float,
                load: np.ndarray) -> Dispatch:
        """Whole tokens (when the load is whole: the function pool bills the replicas that really run),
        then invoke the used replicas; the layer starts when the last of them is ready."""
        load = np.asarray(load, dtype=np.float64)
        if np.array_equal(load, np.rint(load)):
            tokens = round_split(tokens, expert, load).astype(np.float64)
        used = tokens > 0
        start = max([now] + [self.pool.ready_s(layer, e, g) for e, g in zip(expert[used].tolist(), gpu[used].tolist())])
        self.pool.invoke(layer, expert[used], gpu[used], now, start)
        return Dispatch(expert, gpu, tokens, start)

    def _cold_start(self, layer: int, expert: int, now: float) -> int:
        """Start a copy of an expert that has no instance at all (scaled to zero); returns its GPU:
        the GPU with the fewest instances of the layer, room made there when possible."""
        counts = [self.pool.count_on(layer, g) for g in range(self.setting.num_gpus)]
        gpu = int(np.argmin(counts))
        self.pool.make_room(layer, gpu, self.setting.slots_per_gpu, set(), now)
        self.pool.warm_up(layer, [expert], [gpu], now, needed=True)
        return gpu

    def observe(self, layer: int, true_load: np.ndarray) -> None:
        self.last_load[layer] = np.asarray(true_load, dtype=np.float64)

    def end_iteration(self, now: float) -> None:
        self.pool.reclaim(now)

    def replicas(self) -> int:
        """Replicas live now, over all layers."""
        return self.pool.live_count()


def hold_copies(pool: FunctionPool, layer: int, plan: LayerPlan, now: float, keep_more: bool) -> None:
    """Bill every replica `plan` places: k replicas of an expert on one GPU (EPLB's packing allows it)
    are k weight copies in that instance. keep_more: an older plan that still runs holds more."""
    pairs: dict[tuple[int, int], int] = {}
    for key in zip(plan.expert.tolist(), plan.gpu.tolist()):
        pairs[key] = pairs.get(key, 0) + 1
    for (e, g), k in pairs.items():
        inst = pool.get(layer, e, g)
        want = k if inst is None or not keep_more else max(k, inst.copies)
        if inst is not None and inst.copies != want:
            pool.set_copies(layer, e, g, want, now)
