"""The expert-parallel MoE block: the model's own gate picks top-k, the runtime spreads each
expert's tokens over its warm replicas on the workers, runs them, and combines in the model's order.

At load time `ExpertParallelRuntime.install()` swaps each MoE layer's fused experts module for an
`ExpertParallelExperts` with the same call signature `(hidden [T, H], top_k_index [T, k],
top_k_weights [T, k]) -> [T, H]`; attention, norms and gates stay as they are (replicated).
How a layer's pairs are split over the replicas (on the device when the policy offers a replica
table, else by its host `dispatch`) is `serving/routing.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from moeless_cli.online.device_dispatch import SERVE_MODES, MeasuredChoice
from moeless_cli.online.policies import Policy
from moeless_cli.serving import gather as gather_mod
from moeless_cli.serving import routing
from moeless_cli.serving.experts import ExpertMath, HostStore, expert_math_of
from moeless_cli.serving.lifecycle import FunctionLedger
from moeless_cli.serving.workers import Worker


DEFAULT_TILE_TOKENS = 64  # rows per GEMM tile when the policy's setting names none (device split's cost)


@dataclass
class LayerTiming:
    layer: int  # MoE layer index
    tokens: int  # tokens entering the layer (each routed to top_k experts)
    dispatch_s: float  # split + gather of rows onto the workers
    worker_s: list[float]  # expert compute per worker, each measured on its own
    combine_s: float  # weighting and summing the experts' outputs back
    cold_s: float = 0.0  # replica copies that had to happen on the critical path
    decide_s: float = 0.0  # the policy's dispatch decision (control plane; part of dispatch_s)
    worker_tokens: list[int] = field(default_factory=list)  # (token, expert) rows each worker computed
    worker_replicas: list[int] = field(default_factory=list)  # replicas each worker ran

    @property
    def moe_s(self) -> float:
        """What parallel workers would see: the slowest worker plus dispatch, combine, cold starts."""
        return self.dispatch_s + max(self.worker_s, default=0.0) + self.combine_s + self.cold_s


@dataclass
class Route:
    """One MoE layer call's routing: what the gate chose and how the policy split it."""

    top_k_index: Any  # [T, k] experts per token (the gate's, or the oracle's override)
    order: Any  # [T*k] (token, slot) pair positions grouped by expert, tokens ascending
    token_of: Any  # [T*k] token of each pair in `order`
    load: np.ndarray  # [E] pairs per expert
    expert: np.ndarray  # [u] expert of each used replica, by expert then column: runs follow `order`
    gpu: np.ndarray  # [u] worker of each used replica
    counts: np.ndarray  # [u] pairs each used replica serves (> 0; sums to load per expert)
    cold_s: float  # replica copies made on the critical path
    copied: int  # replicas copied on the critical path (this process's)
    decide_s: float = 0.0  # the split decision (see serving/routing.py)
    pair_gpu: Callable[[], Any] | None = None  # device split: () -> [T*k] worker of each pair, flat order
    mode: str | None = None  # device split: the mode it ran (online/device_dispatch.py); None: on the host


@dataclass
class RuntimeStats:
    layers: list[LayerTiming] = field(default_factory=list)  # every MoE layer call, in order
    predict_s: list[float] = field(default_factory=list)  # predict + scale + place per call (overlapped)
    busy_workers: list[int] = field(default_factory=list)  # workers with tokens, per MoE layer call
    predictions: int = 0  # forecasts made by the predictor (layers ahead)
    split_modes: dict[str, int] = field(default_factory=dict)  # device split calls per mode (primary, balanced)


def _make_module_class():
    import torch

    class _Experts(torch.nn.Module):
        def __init__(self, runtime: "ExpertParallelRuntime", layer: int):
            super().__init__()
            object.__setattr__(self, "runtime", runtime)  # not a submodule: no parameters of its own
            self.layer = layer

        def forward(self, hidden_states, top_k_index, top_k_weights):
            bound = gather_mod.current()
            if bound is None:
                return self.runtime.moe_forward(self.layer, hidden_states, top_k_index, top_k_weights)
            gather, slot = bound
            return gather.exchange(slot, self.layer, hidden_states, top_k_index, top_k_weights)

    return _Experts


class ExpertParallelRuntime:
    """Owns the host store, the workers' replicas, the policy, and per-layer timing."""

    def __init__(self, loaded: Any, workers: list[Worker], policy: Policy, predictor: Any = None, distance: int = 1):
        self.loaded = loaded  # LoadedModel
        self.workers = workers
        self.policy = policy  # prepare / dispatch / observe (see online/policies.py)
        self.predictor = predictor  # LoadPredictor or None
        self.distance = distance  # predict layer l + distance while layer l runs
        # which of the predictor's models the policy wants ("paper" or "moeless"); None: no forecast
        self.predictor_method = policy.predictor_method if predictor is not None else None
        self.store: Any = HostStore()  # where replicas are copied from (dist: serving.experts.FileHostStore)
        self.math: dict[int, ExpertMath] = {}
        self.stats = RuntimeStats()
        self.ledger = FunctionLedger(expert_bytes=0)
        self.started = time.perf_counter()
        self._originals: dict[int, tuple[Any, str, Any]] = {}  # layer -> (parent, attr, module)
        self._restore_blocks: Any = lambda: None  # undoes loaded.standardise_moe_blocks()
        self._tables: dict[int, routing.DeviceTable] = {}  # layer -> the policy's replica table on the device
        self._predictable = set(predictor.layers(distance)) if self.predictor_method else set()
        self.split_choice = MeasuredChoice(loaded.num_moe_layers, self.split_modes())  # device split: mode by measure

    def split_modes(self) -> tuple[str, ...]:
        """The device split's modes this runtime chooses among: the policy's `dispatch_mode` where it names one
        serve runs, else primary and balanced (chosen by measured layer time)."""
        wanted = getattr(getattr(self.policy, "setting", None), "dispatch_mode", "adaptive")
        return SERVE_MODES if wanted == "adaptive" else ((wanted,) if wanted in SERVE_MODES else ("balanced",))

    def now(self) -> float:
        return time.perf_counter() - self.started

    # -- load time ---------------------------------------------------------------------------------
    def install(self) -> None:
        """Swap every MoE layer's experts for the expert-parallel block and warm the policy's replicas."""
        self._attach_store(self._swap_experts())
        self.ledger.expert_bytes = self.store.expert_bytes
        for layer in range(self.loaded.num_moe_layers):
            self._warm(layer, *self.policy.prepare(layer, None, self.now()))

    def _swap_experts(self) -> list[Any]:
        """Put the expert-parallel block in place of each MoE layer's fused experts module; returns
        the fused modules, by MoE layer."""
        cls = _make_module_class()
        self._restore_blocks = self.loaded.standardise_moe_blocks()  # Llama-4 blocks call experts another way
        modules = []
        for layer in range(self.loaded.num_moe_layers):
            module = self.loaded.experts(layer)
            self.math[layer] = expert_math_of(module, f"{self.loaded.model_id} MoE layer {layer}")
            parent_path, _, attr = self.loaded.adapter.experts_path.rpartition(".")
            decoder = self.loaded.model.model.layers[self.loaded.moe_layer_ids[layer]]
            parent = decoder.get_submodule(parent_path) if parent_path else decoder
            self._originals[layer] = (parent, attr, module)
            setattr(parent, attr, cls(self, layer))
            modules.append(module)
        return modules

    def _attach_store(self, modules: list[Any]) -> None:
        """The host store serves replicas from the model's own fused weights (kept in memory)."""
        for layer, module in enumerate(modules):
            self.store.add_layer(layer, module, self.math[layer])

    def uninstall(self) -> None:
        """Put the model's own experts modules back (the plain model again)."""
        for parent, attr, module in self._originals.values():
            setattr(parent, attr, module)
        self._originals.clear()
        self._restore_blocks()

    # -- replicas ----------------------------------------------------------------------------------
    def _load_replicas(self, layer: int, pairs: list[tuple[int, int]]) -> float:
        """Copy (expert, worker) replicas of `layer` from the host store; returns seconds spent."""
        now, spent = self.now(), 0.0
        for e, g in pairs:
            if (layer, e) not in self.workers[g].replicas:
                seconds = self.workers[g].load(self.store, layer, e)
                self.ledger.created((layer, e, g), seconds, now)
                spent += seconds
        return spent

    def _warm(self, layer: int, expert: np.ndarray, gpu: np.ndarray) -> float:
        """The policy wants (expert[r], gpu[r]) warm for `layer`: copy what is missing."""
        return self._load_replicas(layer, [(e, g) for e, g in zip(expert.tolist(), gpu.tolist()) if self.is_local(g)])

    def end_iteration(self) -> None:
        """After each iteration: the policy's bookkeeping (keep-alive reclaim, re-planning), then
        drop from the workers whatever its function pool no longer holds."""
        now = self.now()
        self.policy.end_iteration(now)
        live = {(layer, e, g) for layer, table in self.policy.pool.layers.items() for e, g in table}
        for worker in self.workers:
            if not self.is_local(worker.index):
                continue
            for layer, e in [key for key in worker.replicas if (*key, worker.index) not in live]:
                worker.drop(layer, e)
                self.ledger.retire((layer, e, worker.index), now)

    # -- the MoE layer -----------------------------------------------------------------------------
    def moe_forward(self, layer: int, hidden: Any, top_k_index: Any, top_k_weights: Any) -> Any:
        """hidden: [T, H] router input; top_k_index, top_k_weights: [T, k] from the model's gate."""
        import torch

        self._prepare_ahead(layer, hidden)  # overlaps this layer's compute in a real deployment
        start = time.perf_counter()
        route = self._route(layer, top_k_index)
        x_sorted = hidden.index_select(0, route.token_of)  # [T*k, H] one gather; each replica takes a contiguous run
        jobs, slot_of, moved = self._jobs(route, x_sorted)
        self.ledger.ran(len(slot_of), route.copied)
        dispatched = time.perf_counter()
        outputs, worker_s = {}, [0.0] * len(self.workers)
        for g, job in jobs.items():
            outputs[g], worker_s[g] = self.workers[g].run(self.math[layer], layer, job)
        ran = time.perf_counter()

        parts = [outputs[g][j] for g, j in slot_of]
        if moved:
            parts = [p.to(hidden.device) for p in parts]
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)  # [T*k, H] in `order`
        final = self.math[layer].combine(rows, route.order, route.token_of, route.load, top_k_weights, hidden)
        end = time.perf_counter()
        width = len(self.workers)
        timing = LayerTiming(layer, route.top_k_index.shape[0], dispatched - start - route.cold_s, worker_s, end - ran,
                             route.cold_s, route.decide_s,
                             np.bincount(route.gpu, weights=route.counts, minlength=width).astype(int).tolist(),
                             np.bincount(route.gpu, minlength=width).tolist())
        self.stats.layers.append(timing)
        if route.mode is not None:
            self.split_choice.record(layer, int(route.top_k_index.numel()), route.mode, timing.moe_s)
        self.stats.busy_workers.append(len(jobs))
        # per-invocation billing of the replicas that ran (the policy recorded their use)
        self.policy.pool.bill(layer, len(slot_of), timing.moe_s)
        return final

    def _jobs(self, route: "Route", x_sorted: Any) -> tuple[dict[int, list[tuple[int, Any]]], list[tuple[int, int]], bool]:
        """Each used replica's contiguous run of x_sorted ([T*k, H], in `route.order`) as a job of its
        worker: (jobs per worker, (worker, position in its jobs) per used replica, whether any
        worker sits on another device than x_sorted)."""
        device = x_sorted.device
        jobs: dict[int, list[tuple[int, Any]]] = {}
        slot_of: list[tuple[int, int]] = []
        moved = False
        for e, g, x in zip(route.expert.tolist(), route.gpu.tolist(), x_sorted.split(route.counts.tolist())):
            target = self.workers[g].device
            if target != device:
                x, moved = x.to(target), True
            job = jobs.setdefault(g, [])
            slot_of.append((g, len(job)))
            job.append((e, x))
        return jobs, slot_of, moved

    def _route(self, layer: int, top_k_index: Any) -> "Route":
        """Group the (token, slot) pairs by expert (on the gate's device) and split each expert's
        pairs over its replicas: on the device when the policy offers a replica table, else by the
        policy's host `dispatch`. Then copy any chosen replica that is not loaded (critical path)."""
        import torch

        num_tokens, k = top_k_index.shape
        if self.policy.perfect_balance:  # oracle: overrides the gate (lossy)
            top_k_index = (torch.arange(num_tokens * k, device=top_k_index.device) % self.loaded.num_experts).view(
                num_tokens, k)
        flat = top_k_index.reshape(-1)  # [T*k] expert of each (token, slot) pair
        order, token_of = routing.group_pairs(flat, k)
        table = self._device_table(layer, flat.device)
        split = (self._split_on_device(layer, top_k_index, table) if table is not None
                 else self._split_on_host(layer, top_k_index))
        missing = [(e, g) for e, g in zip(split.expert.tolist(), split.gpu.tolist())
                   if self.is_local(g) and (layer, e) not in self.workers[g].replicas]
        cold = self._load_replicas(layer, missing) if missing else 0.0  # on the critical path
        if self.predictor is not None:
            self.predictor.observe_load(layer, split.load)
        return Route(top_k_index, order, token_of, split.load, split.expert, split.gpu, split.counts, cold,
                     len(missing), split.decide_s, split.pair_gpu, split.mode)

    def _device_table(self, layer: int, device: Any) -> "routing.DeviceTable | None":
        """The policy's replica table for `layer` on `device` when it offers one (cached while unchanged)."""
        offer = getattr(self.policy, "device_table", None)
        table = offer(layer) if offer is not None else None
        if table is None:
            return None
        self._tables[layer] = routing.device_table(table, device, self._tables.get(layer))
        return self._tables[layer]

    def _layer_counts(self, top_k_index: Any) -> Any:
        """top_k_index: [T, k]. [E] int64 pairs per expert, on its device (dist: global, one collective)."""
        return routing.expert_counts(top_k_index.reshape(-1), self.loaded.num_experts)

    def _split_on_host(self, layer: int, top_k_index: Any) -> "routing.Split":
        load = self._layer_counts(top_k_index).cpu().numpy()
        split = routing.host_split(self.policy, layer, load, self.now())
        self.policy.observe(layer, load)
        return split

    def _split_on_device(self, layer: int, top_k_index: Any, table: "routing.DeviceTable") -> "routing.Split":
        """The device split, then what the policy's `dispatch` would have recorded: the layer's load
        and an invocation of the replicas that run (starting when the last of them is ready)."""
        setting = getattr(self.policy, "setting", None)
        mode = self.split_choice.mode(layer, int(top_k_index.numel()))  # host-side, before the gate's output is read
        started = time.perf_counter()
        counts = self._layer_counts(top_k_index)
        split = routing.device_split(counts, top_k_index.reshape(-1), table, float(getattr(setting, "entry_tokens", 0.0)),
                                     int(getattr(setting, "tile_tokens", DEFAULT_TILE_TOKENS)), started, mode)
        self.stats.split_modes[mode] = self.stats.split_modes.get(mode, 0) + 1
        self.policy.observe(layer, split.load)
        pool, now = self.policy.pool, self.now()
        ready = [pool.ready_s(layer, e, g) for e, g in zip(split.expert.tolist(), split.gpu.tolist())]
        pool.invoke(layer, split.expert, split.gpu, now, max([now] + [t for t in ready if t != float("inf")]))
        return split

    def is_local(self, worker: int) -> bool:
        """Whether this process holds worker `worker`'s replicas (all of them in the local backend)."""
        return True

    def _prepare_ahead(self, layer: int, hidden: Any) -> None:
        """While layer l runs, forecast layer l + d and let the policy pre-warm replicas for it (the
        first layer is prepared from history alone, as nothing runs before it)."""
        start = time.perf_counter()
        if layer == 0:
            self._warm(0, *self.policy.prepare(0, None, self.now()))
        target = layer + self.distance
        if target < self.loaded.num_moe_layers:
            predicted = None
            if target in self._predictable:
                predicted = self.predictor.predict_layer_load(hidden, target, self.distance, self.predictor_method)
                self.stats.predictions += 1
            self._warm(target, *self.policy.prepare(target, predicted, self.now()))
        self.stats.predict_s.append(time.perf_counter() - start)
