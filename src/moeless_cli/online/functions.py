"""Expert functions: every replica (layer, expert, GPU) is a serverless function instance.

Lifecycle: cold -> loading (weights copied in) -> warm (serving) -> idle -> reclaimed once idle for
longer than the keep-alive. Instances of serverful systems (static EP, EPLB) are `pinned`: loaded
once and never reclaimed. A copy comes from a peer GPU that already holds the expert when there is
one (GPU-to-GPU link), else from host memory (host-to-device link); copies into one GPU queue on
its link, so a burst of cold starts takes longer than one.

Accounting, all in one place so serve and the simulator bill the same way:
- counters: cold_starts (copies started), warm_hits (invocations of a replica already warm when its
  layer was dispatched), created, retired, bytes_moved;
- `live_gbs`: GB·s of every live instance from creation to retirement, keep-alive idle and pinned
  instances included (what a serverless GPU platform bills, and what a reserved cluster pays);
- `busy_gbs`: GB·s billed per invocation (instance GB x the time its layer ran), for every system
  that invokes (`bill`): the MoEless paper's proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Key = tuple[int, int, int]  # (layer, expert, gpu)
Slot = tuple[int, int]  # (expert, gpu) within one layer


@dataclass
class Instance:
    created_s: float  # when its weight copy started
    ready_s: float  # when its weights are in place
    last_used_s: float  # last invocation (or creation)
    pinned: bool = False  # serverful: never reclaimed
    copies: int = 1  # weight copies held (EPLB can place two replicas of an expert on one GPU; each holds memory)
    billed_s: float | None = None  # live GB·s of `copies` count from here (None: from created_s)

    def __post_init__(self) -> None:
        if self.billed_s is None:
            self.billed_s = self.created_s

    def live_seconds(self, now: float) -> float:
        """Copy-seconds held since billed_s (earlier ones are settled in the pool's live_gbs)."""
        return self.copies * max(0.0, now - self.billed_s)


@dataclass
class ColdStart:
    layer: int
    expert: int
    gpu: int
    ready_s: float  # when the copy completes
    from_peer: bool  # copied from another GPU (else from host memory)


@dataclass
class FunctionCounters:
    """The function pool's modelled lifecycle counts (every layer times its multiplicity); what serve
    really copied is `serving.lifecycle.MeasuredFunctionCounters`."""

    cold_starts: int = 0
    warm_hits: int = 0
    created: int = 0
    retired: int = 0
    bytes_moved: float = 0.0


@dataclass
class FunctionPool:
    """The expert function instances of one deployment."""

    num_gpus: int  # GPUs instances may live on
    expert_bytes: float  # bytes of one expert's weights
    keep_alive_s: float  # idle time after which an unpinned instance is reclaimed
    host_gbps: float = 25.0  # host-to-device copy bandwidth per GPU, GB/s
    peer_gbps: float | None = None  # GPU-to-GPU copy bandwidth, GB/s (None: peers not used)
    multiplicity: list[int] | None = None  # per layer: model layers it stands for (simulator), else 1
    max_backlog_s: float | None = None  # refuse a copy into a GPU whose copy link is busy this long ahead
    layers: dict[int, dict[Slot, Instance]] = field(default_factory=dict)  # layer -> (expert, gpu) -> instance
    counters: FunctionCounters = field(default_factory=FunctionCounters)
    live_gbs: float = 0.0  # accumulated for retired instances; see live_gb_seconds(now)
    busy_gbs: float = 0.0  # per-invocation billing (every system alike)
    _link_free_s: list[float] = field(default_factory=list)  # when each GPU's copy link is free

    def __post_init__(self) -> None:
        if not self._link_free_s:
            self._link_free_s = [0.0] * self.num_gpus

    @property
    def expert_gb(self) -> float:
        return self.expert_bytes / 1e9

    def times(self, layer: int) -> int:
        """How many model layers `layer` stands for (the simulator runs identical layers once)."""
        return 1 if self.multiplicity is None else int(self.multiplicity[layer])

    def copy_seconds(self, from_peer: bool, copies: int = 1) -> float:
        gbps = self.peer_gbps if (from_peer and self.peer_gbps) else self.host_gbps
        return copies * self.expert_gb / gbps

    def _layer(self, layer: int) -> dict[Slot, Instance]:
        return self.layers.setdefault(layer, {})

    def get(self, layer: int, expert: int, gpu: int) -> Instance | None:
        return self.layers.get(layer, {}).get((expert, gpu))

    def has_peer(self, layer: int, expert: int, gpu: int, now: float) -> bool:
        return any(e == expert and g != gpu and inst.ready_s <= now for (e, g), inst in self._layer(layer).items())

    def warm_up(self, layer: int, experts, gpus, now: float, pinned: bool = False,
                preloaded: bool = False, needed: bool = False) -> list[ColdStart]:
        """Make sure replicas (experts[r], gpus[r]) of `layer` exist; start copies for missing ones.

        preloaded: the instances are in place at `now` (a deployment's initial weights), no copy.
        needed: a layer waits for them, so a busy copy link (max_backlog_s) never refuses them.
        Returns the cold starts begun.
        """
        started = []
        table = self._layer(layer)
        m = self.times(layer)
        for e, g in zip(np.asarray(experts).tolist(), np.asarray(gpus).tolist()):
            key = (e, g)
            inst = table.get(key)
            if inst is not None:
                inst.last_used_s = max(inst.last_used_s, now)
                inst.pinned = inst.pinned or pinned
                continue
            if preloaded:
                table[key] = Instance(now, now, now, pinned)
                self.counters.created += m
                continue
            if not needed and self.max_backlog_s is not None and self._link_free_s[g] - now > self.max_backlog_s:
                continue  # the link is saturated: a copy begun now would land too late to matter
            peer = self.peer_gbps is not None and self.has_peer(layer, e, g, now)
            begin = max(now, self._link_free_s[g])
            ready = begin + self.copy_seconds(peer, m)
            self._link_free_s[g] = ready
            table[key] = Instance(now, ready, ready, pinned)
            self.counters.cold_starts += m
            self.counters.created += m
            self.counters.bytes_moved += m * self.expert_bytes
            started.append(ColdStart(layer, e, g, ready, peer))
        return started

    def ready(self, layer: int, expert: int, gpu: int, now: float) -> bool:
        inst = self.get(layer, expert, gpu)
        return inst is not None and inst.ready_s <= now

    def ready_s(self, layer: int, expert: int, gpu: int) -> float:
        """When the instance is ready (inf when it does not exist)."""
        inst = self.get(layer, expert, gpu)
        return inst.ready_s if inst is not None else float("inf")

    def invoke(self, layer: int, experts, gpus, dispatched_s: float, start_s: float) -> None:
        """Record an invocation of replicas (experts[r], gpus[r]) dispatched at dispatched_s that run
        from start_s: each one already warm at dispatched_s is a warm hit (the others waited for a copy)."""
        hits = 0
        table = self._layer(layer)
        for e, g in zip(np.asarray(experts).tolist(), np.asarray(gpus).tolist()):
            inst = table.get((e, g))
            if inst is not None:
                hits += inst.ready_s <= dispatched_s
                inst.last_used_s = max(inst.last_used_s, start_s)
        self.counters.warm_hits += self.times(layer) * hits

    def bill(self, layer: int, replicas: int, busy_s: float) -> None:
        """Per-invocation billing: `replicas` instances of `layer` ran for busy_s seconds."""
        self.busy_gbs += self.times(layer) * replicas * self.expert_gb * busy_s

    def retire(self, key: Key, now: float) -> None:
        inst = self._layer(key[0]).pop((key[1], key[2]))
        m = self.times(key[0])
        self.live_gbs += m * self.expert_gb * inst.live_seconds(now)
        self.counters.retired += m

    def set_copies(self, layer: int, expert: int, gpu: int, copies: int, now: float) -> None:
        """Hold `copies` weight copies in instance (expert, gpu) of `layer` from `now` on (a plan that
        puts k replicas of an expert on one GPU holds k copies' memory, and is billed for them)."""
        inst = self._layer(layer)[(expert, gpu)]
        self.live_gbs += self.times(layer) * self.expert_gb * inst.live_seconds(now)
        inst.billed_s, inst.copies = now, copies

    def reclaim(self, now: float) -> list[Key]:
        """Retire unpinned instances idle for longer than the keep-alive. Returns their keys."""
        stale = [
            (layer, e, g)
            for layer, table in self.layers.items()
            for (e, g), inst in table.items()
            if not inst.pinned and inst.ready_s <= now and now - inst.last_used_s > self.keep_alive_s
        ]
        for k in stale:
            self.retire(k, now)
        return stale

    def layer_replicas(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Live instances of one layer (ready or loading): (experts [r], gpus [r]), sorted."""
        keys = sorted(self._layer(layer))
        return (np.array([k[0] for k in keys], dtype=np.int64), np.array([k[1] for k in keys], dtype=np.int64))

    def count_on(self, layer: int, gpu: int | None) -> int:
        """Instances of `layer` on `gpu` (on every GPU when None)."""
        return sum(1 for (_, g) in self._layer(layer) if gpu is None or g == gpu)

    def make_room(self, layer: int, gpu: int | None, slots: int, keep: set[Slot], now: float) -> bool:
        """Retire least-recently-used unpinned ready instances of `layer` on `gpu` (anywhere in the
        layer when None; not in `keep`, never an expert's last warm one) until a new one fits in
        `slots` there. False when none can go."""
        table = self._layer(layer)
        while self.count_on(layer, gpu) >= slots:
            warm: dict[int, int] = {}
            for (e, _), inst in table.items():
                if inst.ready_s <= now:
                    warm[e] = warm.get(e, 0) + 1
            idle = [
                (inst.last_used_s, k) for k, inst in table.items()
                if (gpu is None or k[1] == gpu) and k not in keep and not inst.pinned and inst.ready_s <= now
                and warm[k[0]] > 1
            ]
            if not idle:
                return False
            e, g = min(idle)[1]
            self.retire((layer, e, g), now)
        return True

    def live_gb_seconds(self, now: float) -> float:
        """GB·s of all instances up to `now`, live ones included."""
        live = sum(
            self.times(layer) * inst.live_seconds(now)
            for layer, table in self.layers.items() for inst in table.values()
        )
        return self.live_gbs + self.expert_gb * live

    def live_count(self) -> int:
        """Live weight copies, counting each simulated layer as the model layers it stands for."""
        return sum(self.times(layer) * sum(inst.copies for inst in table.values())
                   for layer, table in self.layers.items())
