"""The bench job: the whole pipeline (profile -> predictor -> plan) and every system side by side.

`run_bench` runs the stages through the same jobs as their commands (cached in the out dir,
`bench/pipeline.py`), then every system on a simulated cluster (`bench/compare.py`) or through
serve's runtime (`bench/real.py`), and writes bench.json, report.md and the plots (`pareto.png` too
when the latency-memory sweep ran, `scaling.png` when the simulator reported live replicas over time).
Its request and result types live in `bench/request.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from moeless_cli.bench.request import BenchRequest, BenchResult
from moeless_cli.errors import MoelessError, UnwrittenReport

if TYPE_CHECKING:
    from moeless_cli.bench.compare import OnProgress

__all__ = ["BenchRequest", "BenchResult", "ratios", "run_bench"]


def ratios(systems: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per system: mean MoE-layer latency over static EP, EPLB, Oracle, moeless-paper and the lossless
    floor (`bound`, simulated runs only); memory cost billed alike over static EP's and EPLB's
    (`gbs_live_*`, the headline; `gbs_per_invocation_*`); `gbs_vs_*`: the paper's asymmetric proxy
    (`cost.gbs_proxy`), kept as published. The floor is not a deployment: its cost ratios are None."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else float(a) / float(b)

    def over(core: dict[str, Any], base: str, key: str) -> float | None:
        return ratio(core["cost"][key], systems[base]["cost"][key]) if "cost" in core else None

    bound = systems.get("bound", {}).get("moe_layer_ms", {}).get("mean")
    out: dict[str, dict[str, float | None]] = {}
    for name, core in systems.items():
        moe = core["moe_layer_ms"]["mean"]
        out[name] = {
            "moe_vs_static": ratio(moe, systems["static"]["moe_layer_ms"]["mean"]),
            "moe_vs_eplb": ratio(moe, systems["eplb"]["moe_layer_ms"]["mean"]),
            "moe_vs_oracle": ratio(moe, systems["oracle"]["moe_layer_ms"]["mean"]),
            "moe_vs_moeless_paper": ratio(moe, systems["moeless-paper"]["moe_layer_ms"]["mean"]),
            "moe_vs_bound": ratio(moe, bound),
            "gbs_live_vs_static": over(core, "static", "gbs_live"),
            "gbs_live_vs_eplb": over(core, "eplb", "gbs_live"),
            "gbs_per_invocation_vs_static": over(core, "static", "gbs_per_invocation"),
            "gbs_vs_static": over(core, "static", "gbs_proxy"),
            "gbs_vs_eplb": over(core, "eplb", "gbs_proxy"),
        }
    return out


def is_bench_dir(path: Path) -> bool:
    """A folder an earlier bench run wrote: it holds stages.json or bench.json."""
    return (Path(path) / "stages.json").is_file() or (Path(path) / "bench.json").is_file()


def _prepare(request: BenchRequest) -> tuple[Any, int]:
    """Every check that can fail before minutes of work; returns the trace window replayed and its start."""
    from moeless_cli.bench.pipeline import check_routing_model
    from moeless_cli.fileio import output_directory
    from moeless_cli.sim.presets import get_preset

    request.validate()
    request.resolve_mode()
    window = request.load_trace()
    if request.mode == "sim":
        check_routing_model(request.routing_model(), get_preset(request.preset))
    # New, empty, or a bench folder (its cached stages are reused); never a folder of other files.
    output_directory(request.out, "--out", is_bench_dir, force=True, kind="bench output")
    return window


def _write_outputs(result: BenchResult, out: Path) -> tuple[Path, ...]:
    """bench.json, report.md and the plots; if they cannot be written, the finished report is
    handed to the CLI to print (UnwrittenReport) and the folder goes back to its earlier state."""
    from moeless_cli.bench.outputs import markdown_report, write_plots
    from moeless_cli.fileio import write_bytes_atomic, write_json_atomic

    try:
        files = [write_json_atomic(out / "bench.json", result.core())]
        files.append(write_bytes_atomic(out / "report.md", markdown_report(result).encode()))
        return tuple(files + write_plots(result, out))
    except MoelessError as exc:
        raise UnwrittenReport(f"{exc} (the bench report is printed above; {out} is as before the run)",
                              result.to_json()) from None


def run_bench(request: BenchRequest, say: Callable[[str], None] = lambda _: None,
              on_progress: OnProgress | None = None) -> BenchResult:
    """The whole pipeline, every system, and the reports in request.out. All or nothing: a run
    that fails (or is interrupted) leaves request.out as it was, cached stages included."""
    from moeless_cli.fileio import restored_on_failure

    trace, trace_start = _prepare(request)
    with restored_on_failure(request.out):
        _make_dir(request.out)
        return _run_stages(request, trace, trace_start, say, on_progress)


def _run_stages(request: BenchRequest, trace: Any, trace_start: int, say: Callable[[str], None],
                on_progress: OnProgress | None) -> BenchResult:
    """The stages (cached in request.out), every system on the trace window, and the reports."""
    from moeless_cli.bench.pipeline import predictor_stage, profile_stage

    model = request.routing_model()
    profile = profile_stage(request.out, request.profile_request(), say)
    split = request.replay_split(profile.path, trace_start)
    predictor = predictor_stage(request.out, request.train_request(split), profile, say)
    if request.mode == "real":
        from moeless_cli.bench.real import run_real

        runs = run_real(request, model, profile.path, predictor.path, on_progress)
    else:
        from moeless_cli.bench.compare import run_sim

        runs = run_sim(request, model, trace, profile.path, predictor.path, split, say, on_progress)
    stages = {"profile": profile.as_dict(), "predictor": predictor.as_dict()}
    setting = {**runs.setting, "split": split.as_dict(len(trace))}
    result = BenchResult(mode=request.mode, setting=setting, systems=runs.systems, ratios=ratios(runs.systems),
                         stages=stages if runs.plan is None else stages | {"plan": runs.plan},
                         moe_layer_s=runs.moe_layer_s, simulator_check=runs.simulator_check, pareto=runs.pareto,
                         ablation=runs.ablation, timeline=runs.timeline)
    return dataclasses.replace(result, files=_write_outputs(result, request.out))


def _make_dir(out: Path) -> None:
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoelessError(f"cannot create --out {out}: {exc.strerror}") from None
