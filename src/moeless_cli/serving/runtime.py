"""The expert-parallel MoE block: the model's own gate picks top-k, the runtime spreads each
expert's tokens over its warm replicas on the workers, runs them, and combines in the model's order.

At load time `ExpertParallelRuntime.install()` swaps each MoE layer's fused experts module for an
`ExpertParallelExperts` with the same call signature `(hidden [T, H], top_k_index [T, k],
top_k_weights [T, k]) -> [T, H]`; attention, norms and gates stay as they are (replicated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moeless_cli.online.policies import Policy
from moeless_cli.planning.dispatch import round_split
from moeless_cli.serving import gather as gather_mod
from moeless_cli.serving.experts import ExpertMath, HostStore, expert_math_of
from moeless_cli.serving.lifecycle import FunctionLedger
from moeless_cli.serving.workers import Worker


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
    expert: np.ndarray  # [r] expert of each replica
    gpu: np.ndarray  # [r] worker of each replica
    counts: np.ndarray  # [r] pairs each replica serves (sums to load per expert)
    cold_s: float  # replica copies made on the critical path
    copied: int  # replicas copied on the critical path (this process's)
    decide_s: float = 0.0  # the policy's dispatch decision


@dataclass
class RuntimeStats:
    layers: list[LayerTiming] = field(default_factory=list)  # every MoE layer call, in order
    predict_s: list[float] = field(default_factory=list)  # predict + scale + place per call (overlapped)
    busy_workers: list[int] = field(default_factory=list)  # workers with tokens, per MoE layer call
    predictions: int = 0  # forecasts made by the predictor (layers ahead)


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
        self._predictable = set(predictor.layers(distance)) if self.predictor_method else set()

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
        top_k_index, order, load, expert, gpu, counts = (route.top_k_index, route.order, route.load, route.expert,
                                                         route.gpu, route.counts)
        cold = route.cold_s
        num_tokens, k = top_k_index.shape

        token_of = route.token_of  # [T*k] token of each pair, grouped by expert
        x_sorted = hidden.index_select(0, token_of)  # [T*k, H] one gather; each replica takes a contiguous run
        by_expert = np.argsort(expert, kind="stable")
        used = by_expert[counts[by_expert] > 0]  # replicas with tokens, by expert: runs follow `order`
        used_expert, used_gpu = expert[used].tolist(), gpu[used].tolist()
        device = hidden.device
        moved = {g: self.workers[g].device != device for g in set(used_gpu)}  # worker off hidden's device
        jobs: dict[int, list[tuple[int, Any]]] = {}
        slot_of: list[tuple[int, int]] = []  # per used replica: (worker, position in its jobs)
        for e, g, x in zip(used_expert, used_gpu, x_sorted.split_with_sizes(counts[used].tolist())):
            job = jobs.setdefault(g, [])
            slot_of.append((g, len(job)))
            job.append((e, x.to(self.workers[g].device) if moved[g] else x))
        self.ledger.ran(len(used_expert), route.copied)
        dispatched = time.perf_counter()
        outputs, worker_s = {}, [0.0] * len(self.workers)
        for g, job in jobs.items():
            outputs[g], worker_s[g] = self.workers[g].run(self.math[layer], layer, job)
        ran = time.perf_counter()

        parts = [outputs[g][j] for g, j in slot_of]
        if any(moved.values()):
            parts = [p.to(device) for p in parts]
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)  # [T*k, H] in `order`
        final = self.math[layer].combine(rows, order, token_of, load, top_k_weights, hidden)  # the model's sum
        end = time.perf_counter()
        busy_gpu, width = gpu[used], len(self.workers)
        timing = LayerTiming(layer, num_tokens, dispatched - start - cold, worker_s, end - ran, cold, route.decide_s,
                             np.bincount(busy_gpu, weights=counts[used], minlength=width).astype(int).tolist(),
                             np.bincount(busy_gpu, minlength=width).tolist())
        self.stats.layers.append(timing)
        self.stats.busy_workers.append(len(jobs))
        # per-invocation billing of the replicas that ran (the policy recorded their use)
        self.policy.pool.bill(layer, len(used), timing.moe_s)
        return final

    def _route(self, layer: int, top_k_index: Any) -> "Route":
        """Group the (token, slot) pairs by expert and ask the policy how many each replica serves."""
        import torch

        num_tokens, k = top_k_index.shape
        if self.policy.perfect_balance:  # oracle: overrides the gate (lossy)
            top_k_index = (torch.arange(num_tokens * k, device=top_k_index.device) % self.loaded.num_experts).view(
                num_tokens, k)
        flat = top_k_index.reshape(-1).cpu().numpy()  # [T*k] expert of each (token, slot) pair
        order = np.argsort(flat, kind="stable")  # [T*k] pairs grouped by expert, tokens ascending
        order, token_of = torch.from_numpy(order), torch.from_numpy(order // k)
        if top_k_index.device.type != "cpu":
            order, token_of = order.to(top_k_index.device), token_of.to(top_k_index.device)
        load = np.bincount(flat, minlength=self.loaded.num_experts)  # [E]
        decide = time.perf_counter()
        plan = self.policy.dispatch(layer, load, self.now())
        expert, gpu = np.asarray(plan.expert), np.asarray(plan.gpu)
        counts = round_split(np.asarray(plan.tokens, dtype=np.float64), expert, load)  # [replicas] integers
        decide_s = time.perf_counter() - decide
        busy = np.flatnonzero(counts)
        missing = [(e, g) for e, g in zip(expert[busy].tolist(), gpu[busy].tolist())
                   if self.is_local(g) and (layer, e) not in self.workers[g].replicas]
        cold = self._load_replicas(layer, missing) if missing else 0.0  # on the critical path
        self.policy.observe(layer, load)
        if self.predictor is not None:
            self.predictor.observe_load(layer, load)
        return Route(top_k_index, order, token_of, load, expert, gpu, counts, cold, len(missing), decide_s)

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
