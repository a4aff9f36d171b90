"""online/batching.py: continuous batching under a token budget and the paper's one-second batches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeless_cli.online.batching import (
    ContinuousBatcher,
    Iteration,
    PaperBatcher,
    Request,
    next_event_s,
)


def run_to_end(batcher, requests, step_s=1.0, limit=10_000):
    for r in requests:
        batcher.add(r)
    now, iterations = 0.0, []
    while batcher.has_work():
        it = batcher.next_iteration(now)
        if not it:
            now = max(now, next_event_s(batcher))
            continue
        iterations.append(it)
        now += step_s
        batcher.complete(it, now)
        assert len(iterations) < limit
    return iterations


def test_decodes_first_then_chunked_prefill_under_budget():
    b = ContinuousBatcher(token_budget=8, max_batch=4)
    b.add(Request(0, 0.0, prompt_tokens=5, output_tokens=3))
    b.add(Request(1, 0.0, prompt_tokens=6, output_tokens=2))
    it = b.next_iteration(0.0)
    assert it.prefill == [(0, 5), (1, 3)] and it.decode == []
    b.complete(it, 1.0)
    assert b.timings[0].first_token_s == 1.0 and b.timings[0].generated == 1
    assert b.timings[1].first_token_s is None  # still prefilling
    it = b.next_iteration(1.0)
    assert it.decode == [0] and it.prefill == [(1, 3)]
    b.complete(it, 2.0)
    assert b.timings[1].first_token_s == 2.0
    it = b.next_iteration(2.0)
    assert sorted(it.decode) == [0, 1] and it.num_tokens == 2
    assert b.complete(it, 3.0) == [0, 1]
    assert not b.has_work()
    t0 = b.timings[0]
    assert t0.ttft_s == 1.0 and t0.e2e_s == 3.0 and t0.tpot_s == 1.0


def test_requests_join_only_after_arrival_and_max_batch():
    b = ContinuousBatcher(token_budget=100, max_batch=1)
    b.add(Request(0, 0.5, 2, 2))
    b.add(Request(1, 0.5, 2, 1))
    assert not b.next_iteration(0.0)
    assert next_event_s(b) == 0.5
    it = b.next_iteration(0.6)
    assert it.request_ids == [0]  # max_batch 1 keeps request 1 waiting
    b.complete(it, 1.0)
    b.complete(b.next_iteration(1.0), 2.0)
    assert b.timings[0].done
    it = b.next_iteration(2.0)
    assert it.prefill == [(1, 2)]
    assert b.complete(it, 3.0) == [1]  # one output token: done at its prefill
    assert b.timings[1].tpot_s == 0.0


def test_fail_removes_request_and_counts():
    b = ContinuousBatcher(token_budget=10, max_batch=4)
    b.add(Request(0, 0.0, 3, 5))
    b.add(Request(1, 0.0, 3, 5))
    it = b.next_iteration(0.0)
    b.fail(0, 0.1)
    b.complete(Iteration(prefill=[(1, 3)]), 0.2)
    assert b.timings[0].failed and b.timings[0].e2e_s is None
    assert b.next_iteration(0.2).request_ids == [1]
    assert it.num_tokens == 6


def test_bad_requests_rejected():
    b = ContinuousBatcher(4, 2)
    with pytest.raises(ValueError):
        b.add(Request(0, 0.0, 0, 1))
    b.add(Request(1, 1.0, 1, 1))
    with pytest.raises(ValueError):
        b.add(Request(1, 2.0, 1, 1))
    with pytest.raises(ValueError):
        b.add(Request(2, 0.5, 1, 1))  # out of arrival order
    with pytest.raises(ValueError):
        ContinuousBatcher(0, 1)


def test_paper_batches_by_second_and_run_to_completion():
    b = PaperBatcher()
    reqs = [Request(0, 0.1, 4, 3), Request(1, 0.9, 2, 1), Request(2, 1.2, 5, 2)]
    for r in reqs:
        b.add(r)
    assert not b.next_iteration(0.95)  # the first second has not closed
    assert b.batch_ready_s() == 1.0
    it = b.next_iteration(1.0)
    assert it.prefill == [(0, 4), (1, 2)]  # whole prompts, request 2 arrived in the next second
    b.complete(it, 2.0)
    assert b.timings[1].done
    it = b.next_iteration(2.0)
    assert it.decode == [0]  # request 2's batch waits for this one to finish
    b.complete(it, 3.0)
    it = b.next_iteration(3.0)
    assert it.decode == [0]
    b.complete(it, 4.0)
    it = b.next_iteration(4.0)
    assert it.prefill == [(2, 5)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.integers(1, 20), st.integers(1, 6)), min_size=1, max_size=12),
    st.integers(1, 16),
    st.integers(1, 4),
    st.booleans(),
)
def test_every_request_completes_with_its_tokens(specs, budget, max_batch, paper):
    specs = sorted(specs)
    requests = [Request(i, a, p, o) for i, (a, p, o) in enumerate(specs)]
    batcher = PaperBatcher() if paper else ContinuousBatcher(budget, max_batch)
    iterations = run_to_end(batcher, requests)
    prompt_done = {r.id: 0 for r in requests}
    decodes = {r.id: 0 for r in requests}
    for it in iterations:
        if not paper:
            assert it.num_tokens <= budget
            assert len(it.request_ids) <= max_batch
        assert len(set(it.request_ids)) == len(it.request_ids)
        for rid, n in it.prefill:
            prompt_done[rid] += n
        for rid in it.decode:
            assert prompt_done[rid] == requests[rid].prompt_tokens  # decode only after prefill
            decodes[rid] += 1
    for r in requests:
        t = batcher.timings[r.id]
        assert prompt_done[r.id] == r.prompt_tokens
        assert decodes[r.id] == r.output_tokens - 1
        assert t.generated == r.output_tokens
        assert t.ttft_s >= 0 and t.e2e_s >= t.ttft_s and t.tpot_s >= 0
