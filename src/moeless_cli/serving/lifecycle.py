"""What really happened to the replicas on the workers: measured weight copies and their memory.

The lifecycle decisions (cold, loading, warm, idle, reclaimed after the keep-alive) belong to the
shared `online/functions.py` FunctionPool inside the policy, which models copy times; this ledger
records the real copies the runtime made for those decisions (count, bytes, measured seconds) and
the memory they held over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MeasuredFunctionCounters:
    """What the runtime measured of its replicas (serve's `functions_measured`); the function pool's
    modelled counts are `online.functions.FunctionCounters`."""

    cold_starts: int = 0  # replicas created by copying weights (includes the initial warm-up)
    warm_hits: int = 0  # replicas a layer call ran that were already on their worker (not copied for it)
    created: int = 0  # instances ever created
    retired: int = 0  # replicas dropped from a worker because the policy reclaimed them
    bytes_moved: int = 0  # weight bytes copied host -> worker
    cold_start_s: float = 0.0  # measured seconds of those copies
    memory_byte_s: float = 0.0  # integral of live instance bytes over time (keep-alive idle included)


@dataclass
class FunctionLedger:
    expert_bytes: int  # bytes of one replica
    counters: MeasuredFunctionCounters = field(default_factory=MeasuredFunctionCounters)
    live_keys: set[tuple[int, int, int]] = field(default_factory=set)  # (layer, expert, worker) on a worker now
    peak_live: int = 0  # most replicas live at once
    _last_event: float | None = None

    def _advance(self, now: float) -> None:
        if self._last_event is not None and now > self._last_event:
            self.counters.memory_byte_s += len(self.live_keys) * self.expert_bytes * (now - self._last_event)
        self._last_event = now if self._last_event is None else max(now, self._last_event)

    def created(self, key: tuple[int, int, int], seconds: float, now: float) -> None:
        self._advance(now)
        self.live_keys.add(key)
        self.peak_live = max(self.peak_live, len(self.live_keys))
        c = self.counters
        c.cold_starts += 1
        c.created += 1
        c.bytes_moved += self.expert_bytes
        c.cold_start_s += seconds

    def ran(self, replicas: int, copied: int) -> None:
        """One MoE layer call ran `replicas` replicas here, `copied` of them copied in for it (cold)."""
        self.counters.warm_hits += replicas - copied

    def retire(self, key: tuple[int, int, int], now: float) -> None:
        self._advance(now)
        if key in self.live_keys:
            self.live_keys.remove(key)
            self.counters.retired += 1

    def close(self, now: float) -> None:
        """Account memory up to `now` (end of the run)."""
        self._advance(now)
