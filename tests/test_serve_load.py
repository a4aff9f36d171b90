"""benchmarks/serve_load.py: the RSS windows, the arrival window's request count, the exit checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_growth_compares_the_first_and_last_minute(load_bench):
    mb = 2**20
    samples = [(t, 100 * mb) for t in range(0, 60)] + [(t, 150 * mb) for t in range(60, 120)]
    samples += [(t, 105 * mb) for t in range(120, 181)]
    g = load_bench.growth(samples)
    assert g["window_s"] == 60 and g["first_mb"] == 100 and g["last_mb"] == 105
    assert g["growth"] == pytest.approx(0.05) and g["peak_mb"] == 150 and g["serving_s"] == 180
    short = load_bench.growth([(0.0, 10 * mb), (1.0, 10 * mb), (2.0, 12 * mb), (3.0, 12 * mb)])
    assert short["window_s"] == 1.0 and short["growth"] == pytest.approx(0.2)  # a third of a short run
    assert load_bench.growth([(0.0, mb)])["growth"] is None


def test_rss_is_read_and_sampled(load_bench):
    import time

    assert load_bench.rss_bytes() > 10 * 2**20
    sampler = load_bench.RssSampler(period=0.01)
    sampler.start()
    sampler.start()  # idempotent: serve calls it on every finished request
    time.sleep(0.1)
    sampler.stop()
    assert len(sampler.samples) >= 3 and all(b > 0 for _, b in sampler.samples)


def test_requests_in_window_scale_with_the_rate(load_bench):
    slow, fast = load_bench.requests_in_window(4, 180), load_bench.requests_in_window(16, 180)
    assert slow == 3470 and fast == 16831  # azure-conv averages 5.5 requests/s
    assert load_bench.requests_in_window(16, 10) < fast
