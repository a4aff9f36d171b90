"""Join the MoE-layer calls of requests running in separate threads into one expert-parallel batch.

Continuous batching runs each request's attention with its own KV cache (one thread each); at every
MoE layer the threads meet here, and the last to arrive dispatches all their tokens at once — the
point where an expert-parallel system does its all-to-all. Every request passes the MoE layers in
the same order, so the layer index identifies the meeting.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

_current = threading.local()


class Gather:
    def __init__(self, participants: int, run: Callable[[int, Any, Any, Any], Any]):
        self.participants = participants  # threads that meet at every MoE layer
        self._run = run  # (layer, hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]
        self._cond = threading.Condition()
        self._arrived: dict[int, dict[int, tuple[Any, Any, Any]]] = {}  # layer -> slot -> inputs
        self._results: dict[int, dict[int, Any]] = {}  # layer -> slot -> output
        self._failed: BaseException | None = None

    def abort(self, error: BaseException) -> None:
        with self._cond:
            if self._failed is None:
                self._failed = error
            self._cond.notify_all()

    def exchange(self, slot: int, layer: int, hidden: Any, index: Any, weights: Any) -> Any:
        import torch

        with self._cond:
            self._check()
            arrived = self._arrived.setdefault(layer, {})
            arrived[slot] = (hidden, index, weights)
            last = len(arrived) == self.participants
            if not last:
                while layer not in self._results or slot not in self._results[layer]:
                    self._cond.wait(timeout=1.0)
                    self._check()
                return self._results[layer].pop(slot)
        slots = sorted(arrived)
        try:
            out = self._run(layer, torch.cat([arrived[s][0] for s in slots]),
                            torch.cat([arrived[s][1] for s in slots]), torch.cat([arrived[s][2] for s in slots]))
        except BaseException as exc:
            self.abort(exc)
            raise
        sizes = [arrived[s][0].shape[0] for s in slots]
        with self._cond:
            self._results[layer] = dict(zip(slots, out.split(sizes)))
            del self._arrived[layer]
            self._cond.notify_all()
            return self._results[layer].pop(slot)

    def _check(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"another request of this iteration failed: {self._failed}")


def current() -> tuple[Gather, int] | None:
    """The (gather, slot) of the calling thread, or None outside a gathered iteration."""
    return getattr(_current, "binding", None)


def bind(gather: Gather | None, slot: int = 0) -> None:
    _current.binding = None if gather is None else (gather, slot)
