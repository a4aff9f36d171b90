"""Serverless scaling made visible: bench's live-replica timeline beside the arrival rate (bench/timeline.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny_models import cached_tiny_checkpoint


def _simulator_reports_timelines() -> bool:
    """simulate(...) returns its live-replica series (the small change to sim/simulator.py this feature needs)."""
    import inspect

    from moeless_cli.sim import simulator

    return '"timeline"' in inspect.getsource(simulator.simulate)


needs_simulator_timeline = pytest.mark.skipif(
    not _simulator_reports_timelines(),
    reason="sim/simulator.py simulate() does not return \"timeline\": {\"t_s\", \"live_replicas\"} yet (pool.live_count() "
           "after each iteration and each idle gap's reclaim; bench/timeline.py reads it)")


def test_envelope_keeps_every_point_of_a_short_series():
    times = np.arange(10.0)
    assert np.array_equal(timeline_module().envelope(times, times * 2, limit=500), np.arange(10))


def test_envelope_keeps_a_short_dip_and_a_burst_within_the_limit():
    times = np.arange(5000.0)
    values = np.full(5000, 40.0)
    values[1234], values[4321] = 8.0, 95.0  # one scale-in and one burst, a point each
    keep = timeline_module().envelope(times, values, limit=500)
    assert keep.size <= 500 and np.all(np.diff(keep) > 0)
    assert 1234 in keep and 4321 in keep and values[keep].min() == 8.0 and values[keep].max() == 95.0


def test_arrival_rate_counts_requests_per_second():
    rate = timeline_module().arrival_rate(np.array([0.0, 0.2, 0.9, 1.5, 3.9]), end_s=4.5)
    assert rate["bin_s"] == 1.0 and rate["t_s"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rate["requests_per_s"] == [3.0, 1.0, 0.0, 1.0, 0.0]
    long = timeline_module().arrival_rate(np.array([0.0, 4.0, 600.0]), end_s=601.0)
    assert long["bin_s"] == 5.0 and sum(long["requests_per_s"]) * 5.0 == pytest.approx(3)


def test_build_timeline_is_per_model_layer_and_downsampled():
    raw = {"moeless": {"t_s": list(np.arange(2000.0) / 100), "live_replicas": [64] * 1000 + [32] * 1000}}
    doc = timeline_module().build_timeline(raw, preset_layers=32.0, arrival_s=np.array([0.0, 1.0, 2.5]))
    series = doc["systems"]["moeless"]
    assert series["points"] == 2000 and len(series["t_s"]) <= timeline_module().MAX_POINTS == 500
    assert set(series["live_replicas_per_layer"]) == {2.0, 1.0}
    assert doc["arrival_rate"]["t_s"][-1] <= series["t_s"][-1] and sum(doc["arrival_rate"]["requests_per_s"]) == 3
    assert timeline_module().build_timeline({}, 32.0, np.zeros(0)) is None


def timeline_module():
    from moeless_cli.bench import timeline

    return timeline


@needs_simulator_timeline
def test_bench_writes_the_scaling_plot_and_timeline(cli, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"prompt {i}: " + "experts scale out " * (1 + i % 3)}) + "\n"
                               for i in range(8)))
    out = tmp_path / "run"
    result = cli("bench", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", prompts, "--num-prompts", "8",
                 "--epochs", "2", "--max-requests", "6", "--time-scale", "20", "--no-pareto", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    timeline = doc["timeline"]
    assert set(timeline) >= {"systems", "arrival_rate", "note"}
    assert set(timeline["systems"]) >= {"static", "eplb", "moeless-paper", "moeless"}
    for name, series in timeline["systems"].items():
        assert len(series["t_s"]) == len(series["live_replicas_per_layer"]) <= 500, name
        assert series["t_s"] == sorted(series["t_s"]) and min(series["live_replicas_per_layer"]) > 0, name
    static = doc["systems"]["static"]["replicas"]["mean_per_layer"]
    assert timeline["systems"]["static"]["live_replicas_per_layer"][-1] == pytest.approx(static)  # pinned: constant
    rate = timeline["arrival_rate"]
    assert sum(rate["requests_per_s"]) * rate["bin_s"] == pytest.approx(6)  # every replayed request counted once
    assert json.loads((out / "bench.json").read_text())["timeline"]["systems"].keys() == timeline["systems"].keys()
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG" and str(out / "scaling.png") in doc["files"]
    assert "![Live replicas over time](scaling.png)" in (out / "report.md").read_text()
