"""Online policies: which replicas are warm for each MoE layer and how its tokens spread over them.

Every system implements the `Policy` protocol of `online/policy_base.py` (what serve's runtime and the
simulator see of a system), most by subclassing its `OnlinePolicy`.

Registry (`ONLINE_POLICIES`):
- static: Megatron-LM expert parallelism, expert e on GPU e mod G, pinned, no replicas.
- eplb: DeepSeek EPLB with a fixed replica budget (`replica_budget`: its redundant experts),
  re-planned every `eplb_period` iterations from the last `eplb_window` iterations' loads; new
  copies load in the background and the plan switches when they are in place. It dispatches as
  vLLM does: each token goes to a pseudo-random replica of its expert (equal shares in expectation,
  not the planner's shares), drawn from a generator seeded by (`dispatch_seed`, layer, iteration).
- eplb+balanced: EPLB's placement and re-plans, with moeless's device split over the plan's replicas
  (`online/device_dispatch.py`): placement and dispatch rule measured apart.
- oracle: static placement, but tokens are balanced perfectly over GPUs whatever the gate said
  (lossy: it changes the model's output); its time is the floor under the default time model.
- moeless-paper: the published Algorithms 1 + 2 on the gate-copy predictor's forecast, every layer
  and iteration, equal split over the planned replicas already warm (falling back to any warm
  instance of an expert; waiting only when an expert has none). One instance per expert (the
  starting static placement) stays pinned, as Algorithm 1 starts from one replica per expert.
- moeless: starts from the `moeless plan` placement (best with `--spares`), plus home replicas where it
  lacks them (`planning/homes.py`: one per expert, E / G per GPU), pins one instance per expert, its
  home (`pin`), pre-warms replicas where the predictor's forecast says the water-filled dispatch
  would still straggle, of experts whose forecast fills one more replica with a weight read's worth of
  tokens, orders each expert's warm replicas by the forecast's cost-aware split, and
  splits each batch on the device over the replicas already warm (`online/device_dispatch.py`:
  home, primary, shares or balanced per layer; never waits for a copy); unpinned replicas go after the
  keep-alive.
The serverless two (moeless-paper, moeless) scale within the GPUs' slots unless `serverless_budget`
caps them (`bench --equal-budget`: EPLB's budget).
Outside the registry, `online/fixed_plan.py` follows a given plan exactly (tests, benchmarks).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from moeless_cli.errors import MoelessError, require_choice
from moeless_cli.online.device_dispatch import EPLB_KERNELS, DeviceDispatcher
from moeless_cli.online.functions import FunctionPool
from moeless_cli.online.policy_base import Dispatch, OnlinePolicy, Policy, PolicySetting, hold_copies
from moeless_cli.planning.device_split import ReplicaTable
from moeless_cli.planning.dispatch import balanced_split, equal_split, gpu_work, random_split, water_fill
from moeless_cli.planning.plan import LayerPlan, PlanningProblem
from moeless_cli.planning.solvers.static import static_placement

# The protocol's types, importable from here with the registry.
__all__ = ["ONLINE_POLICIES", "Dispatch", "OnlinePolicy", "Policy", "PolicySetting", "balanced_over", "make_policy"]


class StaticPolicy(OnlinePolicy):
    name = "static"


class OraclePolicy(OnlinePolicy):
    name = "oracle"
    lossy = True
    perfect_balance = True


class EplbPolicy(OnlinePolicy):
    """DeepSeek EPLB's placement, re-planned on its period, dispatched as vLLM does (`random_split`)."""

    name = "eplb"

    def start(self, now: float = 0.0) -> None:
        self._window = [deque(maxlen=self.setting.eplb_window) for _ in range(self.setting.num_layers)]
        self._pending: dict[int, LayerPlan] = {}
        self._iterations = 0
        super().start(now)

    def initial_plan(self, layer: int) -> LayerPlan:
        from moeless_cli.planning.solvers.eplb import eplb_layer

        return eplb_layer(np.asarray(self.setting.history[layer], dtype=np.float64), self.setting.problem(), None, 0.0)

    def observe(self, layer: int, true_load: np.ndarray) -> None:
        super().observe(layer, true_load)
        self._window[layer].append(np.asarray(true_load, dtype=np.float64))

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        self._switch_when_ready(layer, now)
        plan = self.plans[layer]
        load = np.asarray(true_load, dtype=np.float64)
        d = self._finish(layer, plan.expert, plan.gpu, self._split(layer, plan, load), now, load)
        d.decide_s = EPLB_KERNELS * self.setting.kernel_s  # vLLM's per-pair replica pick, on the device
        return d

    def _split(self, layer: int, plan: LayerPlan, load: np.ndarray) -> np.ndarray:
        """load: [experts]. Tokens per replica of the plan: a pseudo-random replica per token, drawn
        afresh for every (layer, iteration); fractional loads (forecasts, tests) get the expectation."""
        if not np.array_equal(load, np.rint(load)):
            return equal_split(plan.expert, load)
        rng = np.random.default_rng((self.setting.dispatch_seed, layer, self._iterations))
        return random_split(plan.expert, load, rng)

    def _switch_when_ready(self, layer: int, now: float) -> None:
        """Switch to the pending re-plan once all its copies are in place; retire what it dropped."""
        pending = self._pending.get(layer)
        if pending is None or not all(self.pool.ready(layer, e, g, now) for e, g in zip(pending.expert, pending.gpu)):
            return
        old = self.plans[layer]
        keep = set(zip(pending.expert.tolist(), pending.gpu.tolist()))
        for e, g in set(zip(old.expert.tolist(), old.gpu.tolist())) - keep:
            self.pool.retire((layer, e, g), now)
        hold_copies(self.pool, layer, pending, now, keep_more=False)
        self.plans[layer] = pending
        del self._pending[layer]

    def end_iteration(self, now: float) -> None:
        from moeless_cli.planning.solvers.eplb import eplb_layer

        self._iterations += 1
        if self._iterations % self.setting.eplb_period:
            return
        for layer, window in enumerate(self._window):
            if not window or layer in self._pending:
                continue
            plan = eplb_layer(np.sum(window, axis=0), self.setting.problem(), None, 0.0)
            self._pending[layer] = plan
            # needed: the switch waits for every copy, so a busy copy link must not refuse one
            self.pool.warm_up(layer, plan.expert, plan.gpu, now, pinned=True, needed=True)
            hold_copies(self.pool, layer, plan, now, keep_more=True)


class EplbBalancedPolicy(EplbPolicy):
    """EPLB's placement and re-plans; each batch split over the plan's replicas by moeless's device
    split (`online/device_dispatch.py`), its preference order from the layer's last load."""

    name = "eplb+balanced"

    def start(self, now: float = 0.0) -> None:
        self.dispatcher = device_dispatcher(self.setting)
        self._homes_of: dict[int, LayerPlan] = {}  # layer -> the plan its homes were chosen from
        super().start(now)

    def _switch_when_ready(self, layer: int, now: float) -> None:
        """EPLB's switch to a re-plan, and the homes of the plan in force (renamed at the switch, when the
        weights move anyway)."""
        super()._switch_when_ready(layer, now)
        plan = self.plans[layer]
        if self._homes_of.get(layer) is not plan:
            self.dispatcher.set_home(layer, plan_homes(plan, self.setting))
            self._homes_of[layer] = plan

    def device_table(self, layer: int) -> ReplicaTable:
        """The replica table serve's device split uses for `layer` (its plan, in the preference order)."""
        plan = self.plans[layer]
        return self.dispatcher.table(layer, plan.expert, plan.gpu, self.setting.num_experts)[0]

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        self._switch_when_ready(layer, now)
        plan = self.plans[layer]
        forecast = self.forecast(layer, predicted_load)
        self.dispatcher.prefer_forecast(layer, plan.expert, plan.gpu, forecast)
        return plan.expert, plan.gpu

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        self._switch_when_ready(layer, now)
        plan = self.plans[layer]
        return device_split(self, self.dispatcher, layer, plan.expert, plan.gpu, np.asarray(true_load, dtype=np.float64),
                            now)


class MoelessPaperPolicy(OnlinePolicy):
    name = "moeless-paper"
    serverful = False
    predictor_method = "paper"
    decision_on_host = True

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        from moeless_cli.planning.solvers.moeless_paper import moeless_paper_layer

        forecast = self.forecast(layer, predicted_load)
        plan = moeless_paper_layer(forecast, self.setting.problem(serverless=True), self.plans[layer], 0.0)
        self.plans[layer] = plan
        _warm_within_slots(self.pool, layer, plan.expert, plan.gpu, self.setting.slots_per_gpu,
                           self.setting.max_replicas(serverless=True), now)
        return plan.expert, plan.gpu

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        """Equal split over the plan's replicas that are warm; an expert with none warm in the plan
        uses any warm instance of it, and waits for a copy only when there is none at all."""
        plan = self.plans[layer]
        load = np.asarray(true_load, dtype=np.float64)
        ready = np.array([self.pool.ready(layer, e, g, now) for e, g in zip(plan.expert.tolist(), plan.gpu.tolist())],
                         dtype=bool)
        expert, gpu = [plan.expert[ready]], [plan.gpu[ready]]
        live_e, live_g = self.pool.layer_replicas(layer)
        for e in np.setdiff1d(np.flatnonzero(load > 0), plan.expert[ready]).tolist():
            mine = np.flatnonzero(live_e == e)
            warm = [int(live_g[i]) for i in mine if self.pool.ready(layer, e, int(live_g[i]), now)]
            if not warm:  # nothing warm: wait for the earliest copy (a cold start when there is none)
                warm = [min((int(live_g[i]) for i in mine), key=lambda g: self.pool.ready_s(layer, e, g))] if mine.size \
                    else [self._cold_start(layer, e, now)]
            expert.append(np.full(len(warm), e, dtype=np.int64))
            gpu.append(np.asarray(warm, dtype=np.int64))
        expert_all, gpu_all = np.concatenate(expert), np.concatenate(gpu)
        tokens = equal_split(expert_all, load)
        return self._finish(layer, expert_all, gpu_all, tokens, now, load)


class MoelessPolicy(OnlinePolicy):
    name = "moeless"
    serverful = False
    predictor_method = "moeless"

    def start(self, now: float = 0.0) -> None:
        require_choice("pin", self.setting.pin, ("base", "plan"))
        self.dispatcher = device_dispatcher(self.setting)
        self._homes: dict[int, np.ndarray | None] = {}  # layer -> home GPU per expert (set by initial_plan)
        super().start(now)
        for layer, plan in enumerate(self.plans):
            self.dispatcher.set_home(layer, self._homes[layer])
            if self.setting.pin == "base":
                _pin_one_per_expert(self.pool, layer, plan, self._homes[layer])

    def device_table(self, layer: int) -> ReplicaTable:
        """The replica table serve's device split uses for `layer`: every live instance, in the preference order."""
        expert, gpu = self.pool.layer_replicas(layer)
        return self.dispatcher.table(layer, expert, gpu, self.setting.num_experts)[0]

    def initial_plan(self, layer: int) -> LayerPlan:
        """The starting plan (`_starting_plan`) with its home replicas (`planning/homes.py`: static EP's layout,
        the ones the plan lacks added when memory holds them)."""
        from moeless_cli.planning.homes import homes_for_plan

        s = self.setting
        plan = self._starting_plan(layer)
        found = homes_for_plan(plan.expert, plan.gpu, plan.share, s.num_experts, s.num_gpus, s.slots_per_gpu,
                               s.max_replicas(serverless=True))
        self._homes[layer] = None if found is None else found[0]
        if found is None or not found[1].any():
            return plan
        home, new = found
        added = np.flatnonzero(new)  # [new homes] experts
        return LayerPlan(np.concatenate([plan.expert, added]), np.concatenate([plan.gpu, home[added]]),
                         np.concatenate([plan.share, np.zeros(added.size)]))  # a new home serves no planned share

    def _starting_plan(self, layer: int) -> LayerPlan:
        s = self.setting
        if s.static_start:
            return static_placement(s.num_experts, s.num_gpus)
        if s.plan is not None:
            if s.plan.num_gpus != s.num_gpus or s.plan.num_experts != s.num_experts:
                raise MoelessError(
                    f"the moeless plan is for {s.plan.num_experts} experts on {s.plan.num_gpus} GPUs, "
                    f"not {s.num_experts} on {s.num_gpus}"
                )
            plan = s.plan.layers[layer % s.plan.num_layers]
            cap = s.max_replicas(serverless=True)
            if int(plan.slots_used(s.num_gpus).max()) <= s.slots_per_gpu and plan.num_replicas <= cap:
                return plan
        return _water_filled_plan(np.asarray(s.history[layer], dtype=np.float64), s.num_gpus, s.slots_per_gpu,
                                  s.max_replicas(serverless=True))

    def prepare(self, layer: int, predicted_load: np.ndarray | None, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Pre-warm where the forecast's water-filled dispatch straggles (`_add_replica`), then order each expert's
        warm replicas by the forecast's cost-aware split."""
        s = self.setting
        forecast = self.forecast(layer, predicted_load)
        expert, gpu = self.pool.layer_replicas(layer)
        for _ in range(s.max_new_per_layer):
            tokens = water_fill(expert, gpu, forecast, s.num_gpus, s.entry_tokens)
            work = gpu_work(gpu, tokens, s.num_gpus, s.entry_tokens)
            busiest = int(np.argmax(work))
            if work[busiest] <= (1 + s.gain_threshold) * work.sum() / s.num_gpus:
                break
            added = self._add_replica(layer, expert, gpu, forecast, tokens, work, busiest, now)
            if added is None:
                break
            expert, gpu = np.append(expert, added[0]), np.append(gpu, added[1])
        self.dispatcher.prefer_forecast(layer, expert, gpu, forecast)
        return expert, gpu

    def _add_replica(self, layer: int, expert: np.ndarray, gpu: np.ndarray, forecast: np.ndarray, tokens: np.ndarray,
                     work: np.ndarray, busiest: int, now: float) -> tuple[int, int] | None:
        """A new replica of the busiest GPU's heaviest expert on the least-loaded GPU that can take it. Only an
        expert whose forecast fills one more replica with a weight read's worth of tokens (max(entry, tile) each,
        the device split's own rule for how many replicas an expert uses) qualifies: a decode-size forecast
        keeps every expert whole, so copies for it would sit idle until the keep-alive reclaims them."""
        s = self.setting
        replicas = np.bincount(expert, minlength=forecast.size)  # [experts]
        fills = forecast >= (replicas + 1) * max(s.entry_tokens, s.tile_tokens)  # [experts]
        on_busiest = np.flatnonzero((gpu == busiest) & (tokens > 0) & fills[expert])
        # Pre-warming retires nothing (every live replica may serve this batch): it takes free slots only.
        live = np.bincount(self.pool.layer_replicas(layer)[1], minlength=s.num_gpus)  # [gpus]
        if live.sum() >= s.max_replicas(serverless=True) or (live >= s.slots_per_gpu).all():
            return None
        for r in on_busiest[np.argsort(-tokens[on_busiest])].tolist():
            e = int(expert[r])
            holders = set(gpu[expert == e].tolist())
            for g in np.argsort(work, kind="stable").tolist():
                if g in holders or work[g] + s.entry_tokens >= work[busiest] or live[g] >= s.slots_per_gpu:
                    continue
                self.pool.warm_up(layer, [e], [g], now)
                return e, g
        return None

    def dispatch(self, layer: int, true_load: np.ndarray, now: float) -> Dispatch:
        load = np.asarray(true_load, dtype=np.float64)
        expert, gpu = self.pool.layer_replicas(layer)
        ready = np.array([self.pool.ready(layer, e, g, now) for e, g in zip(expert.tolist(), gpu.tolist())], dtype=bool)
        # An expert with load and no warm replica waits for its earliest copy (rare: one is pinned).
        warm_count = np.bincount(expert[ready], minlength=load.size)  # [experts]
        for e in np.flatnonzero((load > 0) & (warm_count == 0)).tolist():
            mine = np.flatnonzero(expert == e)
            if not mine.size:
                g = self._cold_start(layer, e, now)
                expert, gpu, ready = np.append(expert, e), np.append(gpu, g), np.append(ready, True)
            else:
                ready[mine[np.argmin([self.pool.ready_s(layer, e, int(g)) for g in gpu[mine]])]] = True
        return device_split(self, self.dispatcher, layer, expert[ready], gpu[ready], load, now)


def plan_homes(plan: LayerPlan, setting: PolicySetting) -> np.ndarray | None:
    """The home GPU of each expert among `plan`'s replicas, E / G per GPU (`planning/homes.py`), or None."""
    from moeless_cli.planning.homes import balanced_homes

    return balanced_homes(plan.expert, plan.gpu, plan.share, setting.num_experts, setting.num_gpus)


def _pin_one_per_expert(pool: FunctionPool, layer: int, plan: LayerPlan, home: np.ndarray | None) -> None:
    """Keep pinned only each expert's home replica (`plan_homes`), else its largest-share replica of `plan`:
    the rest are serverless (reclaimed after the keep-alive when idle, warmed again when a forecast wants them)."""
    if home is not None:
        keep = {(e, int(g)) for e, g in enumerate(home.tolist())}
    else:
        order = np.lexsort((np.arange(plan.expert.size), -plan.share, plan.expert))
        first = np.ones(order.size, dtype=bool)
        first[1:] = plan.expert[order][1:] != plan.expert[order][:-1]
        keep = {(int(plan.expert[r]), int(plan.gpu[r])) for r in order[first]}
    for e, g in zip(plan.expert.tolist(), plan.gpu.tolist()):
        inst = pool.get(layer, e, g)
        if inst is not None and (e, g) not in keep:
            inst.pinned = False


def device_dispatcher(setting: PolicySetting) -> DeviceDispatcher:
    """The device-side split of moeless and eplb+balanced, costed with the deployment's figures."""
    return DeviceDispatcher(setting.num_layers, setting.num_gpus, setting.entry_tokens, setting.tile_tokens,
                            setting.token_s, setting.kernel_s, setting.counts_collective_s, setting.dispatch_mode)


def device_split(policy: OnlinePolicy, dispatcher: DeviceDispatcher, layer: int, expert: np.ndarray, gpu: np.ndarray,
                 load: np.ndarray, now: float) -> Dispatch:
    """expert, gpu: [replicas] warm; load: [experts]. The device split, invoked, with its modelled cost."""
    tokens, decide_s = dispatcher.split(layer, expert, gpu, load)
    d = policy._finish(layer, expert, gpu, tokens, now, load)
    d.decide_s = decide_s
    return d


def balanced_over(plan: LayerPlan, load: np.ndarray, setting: PolicySetting) -> np.ndarray:
    """load: [experts]. moeless's whole-token dispatch over every replica of `plan`: [replicas]."""
    return balanced_split(plan.expert, plan.gpu, load, setting.num_gpus, setting.entry_tokens)


def _warm_within_slots(pool: FunctionPool, layer: int, expert: np.ndarray, gpu: np.ndarray, slots: int,
                       budget: int, now: float) -> None:
    """Warm the replicas (expert[r], gpu[r]), making room on full GPUs (and under the layer's replica
    budget) by retiring idle instances."""
    keep = set(zip(expert.tolist(), gpu.tolist()))
    table = pool.layers.get(layer, {})
    present = [k for k in keep if k in table]
    if present:
        pool.warm_up(layer, [e for e, _ in present], [g for _, g in present], now)
    missing = sorted(k for k in keep if k not in table)
    if not missing:
        return
    per_gpu = np.bincount([g for _, g in table], minlength=pool.num_gpus)
    total = len(table)
    for e, g in missing:
        if per_gpu[g] >= slots or total >= budget:
            if not (pool.make_room(layer, g, slots, keep, now) and pool.make_room(layer, None, budget, keep, now)):
                continue
            table = pool.layers.get(layer, {})
            per_gpu = np.bincount([h for _, h in table], minlength=pool.num_gpus)
            total = len(table)
        pool.warm_up(layer, [e], [g], now)
        if (e, g) in pool.layers.get(layer, {}):
            per_gpu[g] += 1
            total += 1


def _water_filled_plan(load: np.ndarray, num_gpus: int, slots: int, max_replicas: int) -> LayerPlan:
    """The best-balanced water-filling placement of the planner for load: [experts] within the
    replica budget, else the paper's greedy."""
    from moeless_cli.planning.solvers.greedy import pieces_to_layer, water_fill_candidates
    from moeless_cli.planning.solvers.moeless_paper import moeless_paper_layer

    plans = [pieces_to_layer(p, load) for p in water_fill_candidates(load, num_gpus, slots)]
    plans = [p for p in plans if int(p.slots_used(num_gpus).max()) <= slots and p.num_replicas <= max_replicas]
    if not plans:
        problem = PlanningProblem(num_gpus=num_gpus, slots_per_gpu=slots, replica_budget=max_replicas)
        return moeless_paper_layer(load, problem, None, 0.0)
    return min(plans, key=lambda p: float(p.gpu_loads(load, num_gpus).max()))


ONLINE_POLICIES: dict[str, type[OnlinePolicy]] = {
    "static": StaticPolicy,
    "eplb": EplbPolicy,
    "eplb+balanced": EplbBalancedPolicy,
    "oracle": OraclePolicy,
    "moeless-paper": MoelessPaperPolicy,
    "moeless": MoelessPolicy,
}


def make_policy(name: str, setting: PolicySetting, pool: FunctionPool) -> OnlinePolicy:
    """Build and start policy `name`."""
    require_choice("policy", name, ONLINE_POLICIES)
    policy = ONLINE_POLICIES[name](setting, pool)
    policy.start(0.0)
    return policy
