"""The simulator loop: trace arrivals -> batcher -> per-layer recorded loads -> policy -> time and cost.

Each iteration's loads come from the recorded routing of the requests in its batch; each recorded
layer runs once and counts for the preset layers it stands for. Per layer: the policy prepares the
warm set one layer ahead (d = 1; copies begun then may finish in time), the gate's true load is
dispatched, and the layer takes its wait for copies still loading + its MoE time; attention and
the rest of the model add the non-MoE time, spread evenly over layers.

The policy's per-layer decision is on the critical path: a policy that computes its split on the
host after the gate (`decision_on_host`: moeless-paper) pays the measured seconds of its
`dispatch` call (the thread's CPU time around it, this machine's Python: what the decision costs,
not the waits a loaded machine's scheduler adds); one that decides on the device (moeless,
eplb+balanced: `online/device_dispatch.py`) pays its modelled kernels and collective
(`Dispatch.decide_s`), EPLB likewise vLLM's replica pick (3 kernels); `SimConfig.decision` replaces
any of these by none or a fixed charge. The charge overlaps a copy the layer waits for. Static EP and
Oracle decide what an engine's dispatch kernel computes on the device anyway (DeepEP's layout) and
pay nothing extra. `prepare`
(forecast and pre-warming) runs a layer ahead, overlapped with the layer before, and is not charged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from time import thread_time
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.online.batching import BATCHING, ContinuousBatcher, PaperBatcher, Request, next_event_s
from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.policies import Policy, PolicySetting, make_policy
from moeless_cli.online.report import CostTotals, build_report, latency_stats
from moeless_cli.planning.dispatch import round_split
from moeless_cli.planning.plan import Plan, replica_cap
from moeless_cli.sim.routing import RecordedRouting
from moeless_cli.sim.timemodel import ClusterModel


@dataclass
class SimConfig:
    batching: str = "continuous"  # "continuous" or "paper" (the published one-second batches)
    token_budget: int = 8192  # continuous batching: most tokens per iteration
    max_batch: int = 256  # continuous batching: most running requests
    keep_alive_s: float = 5.0  # serverless instances idle this long are reclaimed
    eplb_period: int = 3000  # EPLB: iterations between re-plans (vLLM's default)
    eplb_window: int = 1000  # EPLB: iterations of history per re-plan (vLLM's default)
    redundant: int | None = None  # EPLB's replicas per layer beyond one per expert (its redundant experts);
    # None: max(2G, E/4) (two spare slots per GPU, or DeepSeek-like E/4), whole GPUs, within memory
    equal_budget: bool = False  # cap moeless-paper and moeless at EPLB's replicas too (else: memory only)
    replicas_per_layer: int | None = None  # every system's replica budget per layer (EPLB's and the
    # serverless cap alike: the latency-memory sweep, `bench/pareto.py`); None: the two rules above
    copy_backlog_s: float = 0.25  # serverless: no new copy into a GPU whose copy link is busy this long
    decision: str | float = "measured"  # per-layer decision charge: "measured" (host code's dispatch call timed
    # here, device splits' modelled kernels), "none", or fixed seconds (deterministic, for tests)
    policy_overrides: tuple[tuple[str, Any], ...] = ()  # (PolicySetting field, value) pairs: ablations, e.g.
    # (("dispatch_mode", "shares"),) or (("static_start", True),)
    request_order: str = "cycle"  # trace request i plays recorded request: "cycle": i mod R; "phases":
    # i * R // n over the n trace requests (each recorded request in turn, once: a phased set's phases in order)

    def validate(self) -> None:
        require_choice("--batching", self.batching, BATCHING)
        require_choice("request order", self.request_order, REQUEST_ORDERS)
        if self.token_budget < 1 or self.max_batch < 1:
            raise MoelessError("token budget and max batch must be at least 1")
        if self.keep_alive_s < 0:
            raise MoelessError(f"--keep-alive must be non-negative, got {self.keep_alive_s}")
        self.decision = parse_decision(self.decision)

    def decision_s(self, measured_s: float) -> float:
        """Seconds charged for one host decision that took measured_s here."""
        if self.decision == "measured":
            return measured_s
        return 0.0 if self.decision == "none" else float(self.decision)


REQUEST_ORDERS = ("cycle", "phases")
DECISIONS = ("measured", "none")


def parse_decision(value: str | float) -> str | float:
    """--decision-cost: "measured", "none" or a non-negative number of seconds (as a number or text)."""
    if isinstance(value, str) and value in DECISIONS:
        return value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise MoelessError(f"--decision-cost must be measured, none or seconds >= 0, got {value!r}")
    return seconds


def replica_budget(num_experts: int, num_gpus: int, slots: int, redundant: int | None) -> int:
    """EPLB's replicas per layer (the serverful budget): E + redundant, rounded up to a multiple of G
    (EPLB fills whole GPUs), within memory. The serverless systems scale within memory, paying for
    live instances, unless `equal_budget` holds them to this too."""
    extra = redundant if redundant is not None else max(2 * num_gpus, num_experts // 4)
    wanted = -(-(num_experts + extra) // num_gpus) * num_gpus
    return replica_cap(num_gpus, slots, wanted)


def make_setting(cluster: ClusterModel, routing: RecordedRouting, config: SimConfig, plan: Plan | None) -> PolicySetting:
    slots = cluster.slots_per_gpu()
    budget = config.replicas_per_layer or replica_budget(routing.num_experts, cluster.num_gpus, slots, config.redundant)
    serverless = budget if config.equal_budget or config.replicas_per_layer else None
    free = config.decision == "none"  # decisions cost nothing: the device split's mode choice sees that too
    return dataclasses.replace(PolicySetting(
        num_layers=routing.num_layers, num_experts=routing.num_experts, num_gpus=cluster.num_gpus,
        slots_per_gpu=slots, history=routing.history, entry_tokens=cluster.entry_tokens,
        tile_tokens=cluster.hardware.gemm_tile_tokens if cluster.time_model == "physical" else 1,
        token_s=cluster.token_s, kernel_s=0.0 if free else cluster.hardware.kernel_s,
        counts_collective_s=0.0 if free else cluster.collective_s(),
        eplb_window=config.eplb_window, eplb_period=config.eplb_period, plan=plan,
        replica_budget=budget, serverless_budget=serverless,
    ), **dict(config.policy_overrides))


@dataclass
class Step:
    """One iteration of a run, enough to replay it: when it began and what it batched."""

    start_s: float
    prefill: list[tuple[int, int, int]]  # (recorded request, start, count)
    decode: list[tuple[int, int]]  # (recorded request, step)
    tokens: int
    context: int  # KV-cache tokens its decodes read


@dataclass
class _Run:
    """One system's state while it runs: the policy, its pool and what it has measured."""

    cluster: ClusterModel
    routing: RecordedRouting
    policy: Policy
    pool: FunctionPool
    predictor: Any
    method: str | None
    config: SimConfig
    layer_s: list[np.ndarray]
    decide_s: list[float] = field(default_factory=list)  # host decisions charged, per layer run (host policies)
    busy_gpu_s: float = 0.0

    def decide(self, layer: int, load: np.ndarray, now: float) -> tuple[Any, float]:
        """The policy's dispatch of the gate's load: [experts], and the seconds its decision is charged."""
        started = thread_time()
        d = self.policy.dispatch(layer, load, now)
        if self.policy.decision_on_host:
            spent = thread_time() - started
        elif d.decide_s > 0:
            spent = d.decide_s  # a device-side decision: its modelled kernels (and collective)
        else:
            return d, 0.0
        charged = self.config.decision_s(spent)
        self.decide_s.append(charged)
        return d, charged

    def iteration(self, step: Step) -> float:
        """Run every layer of one iteration from step.start_s; returns when it ends."""
        cluster, routing, policy, pool = self.cluster, self.routing, self.policy, self.pool
        mult = routing.multiplicity
        load = routing.batch(routing.truth, step.prefill, step.decode)  # [layers, experts]
        forecast = routing.batch(routing.forecasts[self.method], step.prefill, step.decode) if self.method else None
        misc_layer = cluster.misc_s(step.tokens, step.context) / sum(mult)
        t, lead, times = step.start_s, misc_layer, np.zeros(routing.num_layers)
        for layer in range(routing.num_layers):
            predicted = None
            if self.method and layer in routing.forecast_layers:
                raw = self.predictor.blend_counts(forecast[layer], step.tokens, layer, 1, self.method)
                predicted = routing.unfold(raw)
            policy.prepare(layer, predicted, max(step.start_s, t - lead))
            d, decide_s = self.decide(layer, load[layer], t)
            whole = round_split(d.tokens, d.expert, load[layer])  # tokens are indivisible
            moe_s, gpu_s = cluster.moe_layer(d.gpu, whole.astype(np.float64), policy.perfect_balance)
            layer_s = max(d.start_s - t, decide_s) + moe_s  # the decision overlaps a copy it waits for
            pool.bill(layer, int((whole > 0).sum()), moe_s)
            self.busy_gpu_s += mult[layer] * (gpu_s + misc_layer * cluster.num_gpus)
            policy.observe(layer, load[layer])
            if self.method == "moeless":
                self.predictor.observe_load(layer, routing.fold(load[layer]))
            times[layer] = layer_s
            lead = layer_s + misc_layer
            t += mult[layer] * lead
        self.layer_s.append(times)
        policy.end_iteration(t)
        return t

    def layer_times(self) -> np.ndarray:
        """Every preset layer's MoE time, in order: [iterations * preset layers]."""
        if not self.layer_s:
            return np.zeros(0)
        return np.repeat(np.concatenate(self.layer_s), np.tile(self.routing.multiplicity, len(self.layer_s)))


def _start(policy_name: str, cluster: ClusterModel, routing: RecordedRouting, config: SimConfig,
           predictor: Any, plan: Plan | None) -> _Run:
    config.validate()
    hw = cluster.hardware
    setting = make_setting(cluster, routing, config, plan)
    pool = FunctionPool(cluster.num_gpus, cluster.preset.expert_bytes, config.keep_alive_s, host_gbps=hw.host_gbps,
                        peer_gbps=hw.pcie_gbps if hw.fast_link_group <= 2 else hw.fast_link_gbps,
                        multiplicity=routing.multiplicity, max_backlog_s=config.copy_backlog_s)
    policy = make_policy(policy_name, setting, pool)
    method = policy.predictor_method if predictor is not None and routing.forecasts else None
    if predictor is not None:
        predictor.reset_history()
    return _Run(cluster, routing, policy, pool, predictor, method, config, [])


def simulate(policy_name: str, cluster: ClusterModel, routing: RecordedRouting, trace: Any, config: SimConfig,
             predictor: Any = None, plan: Plan | None = None,
             on_iteration: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run one system over the trace (closed loop: its own speed shapes its batches).

    Returns {"report": serve's JSON core, "moe_layer_s": [layer executions], "schedule": [Step], "timeline":
    {"t_s", "live_replicas"}: the pool's live copies (`live_count`) after each iteration and each idle gap's reclaim}.
    """
    run = _start(policy_name, cluster, routing, config, predictor, plan)
    batcher = PaperBatcher() if config.batching == "paper" else ContinuousBatcher(config.token_budget, config.max_batch)
    for i in range(len(trace)):
        batcher.add(Request(i, float(trace.arrival_s[i]), max(1, int(trace.input_tokens[i])),
                            max(1, int(trace.output_tokens[i]))))
    now, replicas_seen, schedule = 0.0, [], []
    timeline: dict[str, list] = {"t_s": [], "live_replicas": []}
    slot = recorded_request(routing.num_requests, len(trace), config.request_order)
    while batcher.has_work():
        it = batcher.next_iteration(now)
        if not it:
            nxt = next_event_s(batcher)
            if nxt is None:
                break
            now = max(now, nxt)
            run.pool.reclaim(now)  # idle time passes (not an iteration: EPLB counts those to re-plan)
            timeline["t_s"].append(now)
            timeline["live_replicas"].append(run.pool.live_count())
            continue
        timings = batcher.timings
        step = Step(
            now,
            [(slot(rid), timings[rid].prefilled, n) for rid, n in it.prefill],
            [(slot(rid), timings[rid].generated) for rid in it.decode],
            it.num_tokens,
            sum(timings[rid].request.prompt_tokens + timings[rid].generated for rid in it.decode),
        )
        schedule.append(step)
        now = run.iteration(step)
        batcher.complete(it, now)
        replicas_seen.append(run.pool.live_count())
        timeline["t_s"].append(now)
        timeline["live_replicas"].append(replicas_seen[-1])
        if on_iteration is not None:
            on_iteration(now)
    generated = sum(t.generated for t in batcher.timings.values())
    report = _report(run, batcher.timings.values(), generated, now, replicas_seen)
    return {"report": report, "moe_layer_s": run.layer_times(), "schedule": schedule, "timeline": timeline}


def _replayed(policy_name: str, cluster: ClusterModel, routing: RecordedRouting, schedule: list[Step],
              config: SimConfig, predictor: Any, plan: Plan | None) -> tuple[_Run, float]:
    """One system run over a fixed batch sequence; returns the run and when its last iteration ended."""
    run = _start(policy_name, cluster, routing, config, predictor, plan)
    end = 0.0
    for step in schedule:
        run.pool.reclaim(step.start_s)  # the idle gap before it (run.iteration ends each iteration)
        end = run.iteration(step)
    return run, end


def recorded_request(recorded: int, trace_requests: int, order: str) -> Callable[[int], int]:
    """Trace request id -> the recorded request whose routing it plays (SimConfig.request_order)."""
    if order == "phases":
        return lambda rid: rid * recorded // max(trace_requests, 1)
    return lambda rid: rid % recorded


def replay(policy_name: str, cluster: ClusterModel, routing: RecordedRouting, schedule: list[Step], config: SimConfig,
           predictor: Any = None, plan: Plan | None = None) -> np.ndarray:
    """MoE-layer times of one system on a fixed batch sequence (same batches for every system)."""
    return _replayed(policy_name, cluster, routing, schedule, config, predictor, plan)[0].layer_times()


def replay_costs(policy_name: str, cluster: ClusterModel, routing: RecordedRouting, schedule: list[Step],
                 config: SimConfig, predictor: Any = None, plan: Plan | None = None) -> dict[str, Any]:
    """`replay`, and what its function pool held and billed up to the last iteration's end:
    {"moe_layer_s": [layer executions], "end_s", "gbs_live", "gbs_per_invocation", "cold_starts"}."""
    run, end = _replayed(policy_name, cluster, routing, schedule, config, predictor, plan)
    return {"moe_layer_s": run.layer_times(), "end_s": end, "gbs_live": run.pool.live_gb_seconds(end),
            "gbs_per_invocation": run.pool.busy_gbs, "cold_starts": run.pool.counters.cold_starts}


def _report(run: _Run, timings: Any, generated: int, now: float, replicas_seen: list[int]) -> dict[str, Any]:
    hw, pool, policy = run.cluster.hardware, run.pool, run.policy
    preset_layers = float(sum(run.routing.multiplicity))
    cost = CostTotals.from_pool(pool, policy.serverful, now, serverless_gpu_s=run.busy_gpu_s,
                                serverful_gpu_s=run.cluster.num_gpus * now, usd_per_gpu_hour=hw.usd_per_gpu_hour)
    seen = np.asarray(replicas_seen or [pool.live_count()], dtype=np.float64)
    report = build_report(policy.name, policy.lossy, timings, run.layer_times(), generated, now, cost, pool.counters,
                          replicas={"mean_per_layer": seen.mean() / preset_layers,
                                    "max_per_layer": seen.max() / preset_layers})
    report["iterations"] = len(run.layer_s)
    # Host decisions charged per layer run (each counts once, whatever the preset layers it stands for).
    report["moe_layer_parts_ms"] = {"decide": latency_stats(np.asarray(run.decide_s) * 1e3, (50, 99))
                                    if run.decide_s else latency_stats([0.0], (50, 99))}
    return report
