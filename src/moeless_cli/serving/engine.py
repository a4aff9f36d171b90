"""Continuous batching on the real model: every request keeps its own KV cache (attention runs
per request, replicated), and the MoE layers of all requests in an iteration meet in one
expert-parallel dispatch (see gather.py). Greedy decoding; each request generates exactly its
`output_tokens` (EOS is not a stop: the trace fixes the output length).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moeless_cli.online.batching import Iteration
from moeless_cli.serving import gather as gather_mod


class ServeEngine:
    def __init__(self, model: Any, runtime: Any, prompts: dict[int, list[int]], max_batch: int):
        self.model = model  # transformers CausalLM with the expert-parallel blocks installed
        self.runtime = runtime  # ExpertParallelRuntime (its moe_forward runs the joined batch)
        self.prompts = prompts  # request id -> prompt token ids
        self.generated: dict[int, list[int]] = {rid: [] for rid in prompts}  # request id -> output ids
        self._prefilled: dict[int, int] = {rid: 0 for rid in prompts}
        self._caches: dict[int, Any] = {}
        self._threads = max(1, max_batch)
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="moeless-req")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def drop(self, request_id: int) -> None:
        """Free a finished or failed request's KV cache."""
        self._caches.pop(request_id, None)

    def run(self, iteration: Iteration) -> None:
        """Run one iteration; raises if the forward failed (the caller fails its requests)."""
        jobs = [(rid, self.prompts[rid][self._prefilled[rid]: self._prefilled[rid] + n], True)
                for rid, n in iteration.prefill]
        jobs += [(rid, [self.generated[rid][-1]], False) for rid in iteration.decode]
        if len(jobs) == 1:
            self._step(*jobs[0])
        else:
            if len(jobs) > self._threads:  # every request of a gathered iteration needs its own thread
                self._pool.shutdown(wait=True)
                self._threads = len(jobs)
                self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="moeless-req")
            gather = gather_mod.Gather(len(jobs), self.runtime.moe_forward)
            futures = [self._pool.submit(self._bound_step, gather, slot, *job) for slot, job in enumerate(jobs)]
            errors = []
            for f in futures:
                try:
                    f.result()
                except BaseException as exc:  # the first real error is re-raised below
                    errors.append(exc)
            if errors:
                raise next((e for e in errors if not str(e).startswith("another request")), errors[0])
        self.runtime.end_iteration()

    def _bound_step(self, gather: gather_mod.Gather, slot: int, rid: int, ids: list[int], prefill: bool) -> None:
        gather_mod.bind(gather, slot)
        try:
            self._step(rid, ids, prefill)
        except BaseException as exc:
            gather.abort(exc)
            raise
        finally:
            gather_mod.bind(None)

    def _step(self, rid: int, ids: list[int], prefill: bool) -> None:
        import torch
        from transformers import DynamicCache

        cache = self._caches.get(rid)
        if cache is None:
            cache = self._caches[rid] = DynamicCache(config=self.model.config)
        device = self.model.device
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=device), cache=cache,
                             use_cache=True, logits_to_keep=1)
        if prefill:
            self._prefilled[rid] += len(ids)
            if self._prefilled[rid] < len(self.prompts[rid]):
                return  # more prompt chunks to go: no token yet
        self.generated[rid].append(int(out.logits[0, -1].argmax()))
