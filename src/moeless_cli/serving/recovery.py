"""What the dist launcher decides when a rank fails: whether the survivors can go on, their options
(one worker fewer, the plan re-made without the lost rank), and, when the run cannot go on, the
report that accounts for every request: finished (from the ranks' journals) or failed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json
from moeless_cli.serving.rundir import RunDir, read_done
from moeless_cli.serving.setup import ServeOptions, expert_slot_cap


@dataclass
class Fault:
    """A rank the launcher saw die or stop answering."""

    rank: int  # global rank
    cause: str  # what was seen, e.g. "exited with code 17", "no heartbeat for 5.1 s (stopped or hung)"
    detected_wall: float  # time.time() when the launcher saw it
    world_before: int  # workers when it happened
    silent_s: float | None = None  # how long its heartbeat had been silent (stalls)

    def to_json(self, ready_wall: float | None) -> dict[str, Any]:
        """ready_wall: when the survivors were serving again (None: they did not)."""
        return {"rank": self.rank, "cause": self.cause, "world_before": self.world_before,
                "heartbeat_silent_s": self.silent_s, "recovered": ready_wall is not None,
                "recovery_s": None if ready_wall is None else max(0.0, ready_wall - self.detected_wall)}


def cannot_recover(o: ServeOptions, run: RunDir) -> str | None:
    """Why o.workers - 1 survivors cannot take over (None: they can)."""
    left = o.workers - 1
    if o.nnodes > 1:
        return "a multi-node run does not recover from a lost rank (start every node again)"
    if left < 1:
        return "no worker is left"
    if o.expert_memory_mb is None or not run.facts.is_file():
        return None
    facts = read_json(run.facts, "dist run facts")
    cap = expert_slot_cap(o.expert_memory_mb, int(facts["replica_bytes"]))
    if cap * left < int(facts["num_experts"]):
        return (f"the {left} surviving worker(s) cannot hold the model's {facts['num_experts']} experts per layer "
                f"under --expert-memory-mb {o.expert_memory_mb:g} ({cap} per worker)")
    return None


def survivor_options(o: ServeOptions, fault: Fault, run: RunDir, attempt: int) -> ServeOptions:
    """The options of the next start: one worker fewer, and the plan without the lost rank's GPU."""
    from moeless_cli.plan_io import read_plan, write_plan
    from moeless_cli.planning.shrink import drop_gpu

    plan = o.plan
    if plan is not None:
        current, doc = read_plan(plan)
        keep = {k: doc[k] for k in ("config_hash", "model_id") if k in doc}
        plan = write_plan(run.root / f"plan.a{attempt}.json", drop_gpu(current, fault.rank), keep)
    return replace(o, workers=o.workers - 1, plan=plan)


def with_recoveries(report: dict[str, Any], faults: list[Fault], run: RunDir) -> dict[str, Any]:
    """The report with the faults seen and how long each recovery took (detection to serving again)."""
    events = []
    for attempt, fault in enumerate(faults):
        ready = run.ready(attempt + 1)
        events.append(fault.to_json(float(ready.read_text()) if ready.is_file() else None))
    recovered = [e["recovery_s"] for e in events if e["recovered"]]
    return report | {"recoveries": len(recovered), "recovery_s": recovered, "faults": events}


def accounted_report(o: ServeOptions, run: RunDir, reason: str, interrupted: bool) -> dict[str, Any]:
    """The report of a run that cannot go on: the journalled requests completed, the rest failed.
    Raises MoelessError (KeyboardInterrupt when interrupted) when no request had started."""
    if not run.facts.is_file():
        if interrupted:
            raise KeyboardInterrupt
        raise MoelessError(f"dist backend stopped: {reason}; no report was written")
    from moeless_cli.online.batching import Request, RequestTiming
    from moeless_cli.online.functions import FunctionCounters
    from moeless_cli.online.report import CostTotals, ServeMeasurements, serve_report
    from moeless_cli.serving.lifecycle import MeasuredFunctionCounters

    facts, done = read_json(run.facts, "dist run facts"), read_done(run.root)
    now = time.time() - float(facts["clock_zero_wall"])
    timings = []
    for rid, arrival, prompt, out in facts["requests"]:
        line, t = done.get(rid), RequestTiming(Request(rid, arrival, prompt, out))
        if line is None:
            t.failed, t.finish_s = True, max(now, arrival)
        else:
            t.prefilled, t.generated, t.first_token_s, t.finish_s = (line["prefilled"], line["generated"],
                                                                    line["first_token_s"], line["finish_s"])
        timings.append(t)
    return serve_report(ServeMeasurements(
        options=replace(o, backend="dist").to_json(), model=facts["model"], workers=o.workers,
        num_layers=int(facts["num_moe_layers"]), policy=facts["policy"], lossy=bool(facts["lossy"]), timings=timings,
        layers=[], predict_s=[], predictor_method=None, predictions=0,
        cost=CostTotals(0.0, 0.0, 0.0, o.workers * now, o.gpu_price_per_hour), functions=FunctionCounters(),
        functions_measured=asdict(MeasuredFunctionCounters()), makespan_s=now, interrupted=interrupted,
        errors=[reason], outputs={rid: line["outputs"] for rid, line in done.items()}))
