"""Request scheduling for serve and the simulator: continuous batching and the paper's batches.

Pure (no torch, no files). A scheduler is fed requests (`add`), asked what runs next
(`next_iteration(now)`) and told when that iteration finished (`complete(iteration, now)`); it
keeps each request's timing, from which TTFT, TPOT and end-to-end latency follow.

- **iteration**: one forward pass of the model over every token the scheduler put in it: prompt
  chunks of requests still prefilling and one token of each request that is decoding.
- **token budget**: most tokens one iteration may hold (prefill chunks count every token, a decode
  step one). Decodes go first, so running requests never starve; a prompt longer than the free
  budget is prefilled in chunks over several iterations (chunked prefill).
- The iteration that completes a request's prefill also yields its first output token (TTFT);
  every decode step yields one more. A request finishes when it has produced `output_tokens`.
- **ContinuousBatcher**: requests join and leave the running batch at every iteration.
- **PaperBatcher**: the published MoEless setting: requests arriving within each second form one
  batch, ready when its second closes; a batch is prefilled whole and runs to completion before
  the next batch starts (no token budget, no joining).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

BATCHING = ("continuous", "paper")  # ContinuousBatcher, PaperBatcher (the published one-second batches)


@dataclass(frozen=True)
class Request:
    id: int  # unique request id
    arrival_s: float  # seconds since the start of the run
    prompt_tokens: int  # prompt length, >= 1
    output_tokens: int  # tokens to generate, >= 1 (the first comes from the prefill)


@dataclass
class Iteration:
    prefill: list[tuple[int, int]] = field(default_factory=list)  # (request id, prompt tokens this step)
    decode: list[int] = field(default_factory=list)  # request ids decoding one token this step

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.prefill) + len(self.decode)

    @property
    def request_ids(self) -> list[int]:
        return [rid for rid, _ in self.prefill] + list(self.decode)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


@dataclass
class RequestTiming:
    request: Request
    prefilled: int = 0  # prompt tokens already run through the model
    generated: int = 0  # output tokens produced so far
    first_token_s: float | None = None  # when the first output token was ready
    finish_s: float | None = None  # when the last output token was ready
    failed: bool = False  # dropped with an error (counted, never silently lost)

    @property
    def done(self) -> bool:
        return self.finish_s is not None or self.failed

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.request.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None or self.failed else self.finish_s - self.request.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first; 0 for single-token outputs."""
        if self.finish_s is None or self.first_token_s is None or self.failed:
            return None
        if self.generated <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.generated - 1)


def _check(request: Request) -> None:
    if request.prompt_tokens < 1 or request.output_tokens < 1:
        raise ValueError(f"request {request.id}: prompt and output token counts must be >= 1")


class _Scheduler:
    """What both batchers share: arrivals in order, per-request timing, completion bookkeeping."""

    def __init__(self) -> None:
        self.timings: dict[int, RequestTiming] = {}  # every request ever added, by id
        self._waiting: deque[int] = deque()  # added, not yet admitted, in arrival order

    def add(self, request: Request) -> None:
        _check(request)
        if request.id in self.timings:
            raise ValueError(f"request id {request.id} added twice")
        if self._waiting and request.arrival_s < self.timings[self._waiting[-1]].request.arrival_s:
            raise ValueError("requests must be added in arrival order")
        self.timings[request.id] = RequestTiming(request)
        self._waiting.append(request.id)

    def next_arrival_s(self) -> float | None:
        """Arrival time of the next request not yet admitted (None when none waits)."""
        return self.timings[self._waiting[0]].request.arrival_s if self._waiting else None

    def has_work(self) -> bool:
        return any(not t.done for t in self.timings.values())

    def complete(self, iteration: Iteration, now: float) -> list[int]:
        """Record that `iteration` finished at `now`. Returns ids of requests that finished."""
        finished = []
        for rid, n in iteration.prefill:
            t = self.timings[rid]
            t.prefilled += n
            assert t.prefilled <= t.request.prompt_tokens, "prefilled past the prompt"
            if t.prefilled == t.request.prompt_tokens:
                t.generated, t.first_token_s = 1, now
                if self._finish_if_done(t, now):
                    finished.append(rid)
        for rid in iteration.decode:
            t = self.timings[rid]
            t.generated += 1
            if self._finish_if_done(t, now):
                finished.append(rid)
        return finished

    def fail(self, request_id: int, now: float) -> None:
        """Mark a request failed (e.g. its iteration raised); it leaves the batch."""
        t = self.timings[request_id]
        t.failed, t.finish_s = True, now
        self._forget(request_id)

    def _finish_if_done(self, t: RequestTiming, now: float) -> bool:
        if t.generated >= t.request.output_tokens:
            t.finish_s = now
            self._forget(t.request.id)
            return True
        return False

    def _forget(self, request_id: int) -> None:
        if request_id in self._waiting:
            self._waiting.remove(request_id)


class ContinuousBatcher(_Scheduler):
    """Iteration-level scheduling under a token budget (decodes first, then chunked prefills)."""

    def __init__(self, token_budget: int, max_batch: int):
        super().__init__()
        if token_budget < 1 or max_batch < 1:
            raise ValueError("token_budget and max_batch must be >= 1")
        self.token_budget = token_budget  # most tokens per iteration
        self.max_batch = max_batch  # most requests running at once
        self._running: list[int] = []  # admitted, unfinished, in admission order

    def next_iteration(self, now: float) -> Iteration:
        """The next iteration at time `now` (empty when nothing has arrived or runs)."""
        while self._waiting and len(self._running) < self.max_batch:
            if self.timings[self._waiting[0]].request.arrival_s > now:
                break
            self._running.append(self._waiting.popleft())
        iteration, budget = Iteration(), self.token_budget
        for rid in self._running:  # decoding requests first: one token each
            t = self.timings[rid]
            if t.prefilled == t.request.prompt_tokens and budget > 0:
                iteration.decode.append(rid)
                budget -= 1
        for rid in self._running:  # then prompts, in admission order, chunked to fit
            t = self.timings[rid]
            left = t.request.prompt_tokens - t.prefilled
            if left > 0 and budget > 0:
                chunk = min(left, budget)
                iteration.prefill.append((rid, chunk))
                budget -= chunk
        return iteration

    def _forget(self, request_id: int) -> None:
        super()._forget(request_id)
        if request_id in self._running:
            self._running.remove(request_id)

    @property
    def running(self) -> list[int]:
        return list(self._running)


class PaperBatcher(_Scheduler):
    """The published batches: arrivals in each whole second form one batch, run to completion."""

    def __init__(self, window_s: float = 1.0):
        super().__init__()
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s  # batching window (the paper: one second)
        self._batch: list[int] = []  # the batch now running

    def batch_ready_s(self) -> float | None:
        """When the next batch closes (the end of its first request's window), or None."""
        first = self.next_arrival_s()
        if first is None:
            return None
        return (math.floor(first / self.window_s) + 1) * self.window_s

    def next_iteration(self, now: float) -> Iteration:
        self._batch = [rid for rid in self._batch if not self.timings[rid].done]
        if not self._batch:
            ready = self.batch_ready_s()
            if ready is None or ready > now:
                return Iteration()
            while self._waiting and self.timings[self._waiting[0]].request.arrival_s < ready:
                self._batch.append(self._waiting.popleft())
            return Iteration(prefill=[(rid, self.timings[rid].request.prompt_tokens) for rid in self._batch])
        return Iteration(decode=list(self._batch))

    @property
    def running(self) -> list[int]:
        return list(self._batch)


def next_event_s(scheduler: _Scheduler) -> float | None:
    """When an idle scheduler may next have work: the next arrival (or the paper batch's close)."""
    if isinstance(scheduler, PaperBatcher):
        return scheduler.batch_ready_s()
    return scheduler.next_arrival_s()
