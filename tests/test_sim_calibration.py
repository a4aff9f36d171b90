"""The simulator's calibration against recorded runs: the fit recovers known constants, and the
prediction goes through the simulator's own cluster model."""

from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.sim.calibration import LayerRecords, calibrate, calibrated_cluster, fit_time_model, predict_moe_s
from moeless_cli.sim.presets import preset_from_profile

W_S, C_S, A_S, B_S = 40e-6, 2e-6, 30e-6, 0.5e-6  # per replica, per row, per layer, exchange per row


def _records(seed: int, calls: int = 300, workers: int = 4, noise: float = 0.0) -> LayerRecords:
    """Synthetic runs timed by the model itself (plus multiplicative noise)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 60, (calls, workers)).astype(float)  # [calls, workers]
    replicas = np.where(rows > 0, rng.integers(1, 4, (calls, workers)), 0).astype(float)
    rows = np.where(replicas > 0, np.maximum(rows, replicas), 0)
    jitter = lambda shape: 1 + noise * rng.standard_normal(shape)  # noqa: E731
    worker_s = (W_S * replicas + C_S * rows) * jitter(rows.shape)
    exchange = (A_S + B_S * rows.sum(axis=1)) * jitter(calls)
    return LayerRecords(worker_s, rows, replicas, exchange, np.zeros(calls), np.full(calls, 5e-6))


def test_fit_recovers_the_constants_and_the_prediction_matches_exactly():
    runs = {"static": _records(0), "moeless": _records(1)}
    fit = fit_time_model(runs["static"])
    assert (fit.replica_s, fit.row_s, fit.layer_fixed_s, fit.exchange_row_s) == pytest.approx((W_S, C_S, A_S, B_S))
    preset = preset_from_profile("tiny", 1, 8, 2, 64, 128)
    predicted = predict_moe_s(calibrated_cluster(fit, preset, 4), runs["moeless"])
    assert predicted == pytest.approx(runs["moeless"].data_plane_s, rel=1e-6)
    assert runs["moeless"].moe_s == pytest.approx(runs["moeless"].data_plane_s + 5e-6)
    check = calibrate(runs, preset)  # each run predicted from the other's fit
    assert check["method"] == "leave-one-system-out" and check["max_abs_error"] < 1e-6


def test_noisy_runs_give_a_small_but_honest_error():
    runs = {"static": _records(0, noise=0.2), "eplb": _records(2, noise=0.2)}
    check = calibrate(runs, preset_from_profile("tiny", 1, 8, 2, 64, 128))
    error = check["systems"]["eplb"]["error"]
    assert 0 < abs(error) < 0.1  # noise does not cancel exactly, and does not bias the fit much
    assert check["systems"]["eplb"]["median_abs_layer_error"] > 0.01


def test_bad_calibration_input():
    with pytest.raises(MoelessError, match="no MoE layer calls"):
        LayerRecords.from_dict({"worker_s": [], "worker_rows": [], "worker_replicas": [], "exchange_s": [],
                                "cold_s": [], "decide_s": []})
    preset = preset_from_profile("tiny", 1, 8, 2, 64, 128)
    with pytest.raises(MoelessError, match="at least two"):
        calibrate({"eplb": _records(0)}, preset)
    with pytest.raises(MoelessError, match="worker counts"):
        calibrate({"eplb": _records(0), "static": _records(1, workers=2)}, preset)


def test_host_stalls_in_the_calibration_run_do_not_skew_the_fit():
    run = _records(0)
    run.worker_s[::50, 0] += 5e-3  # a few calls stalled by the OS: 100x a normal worker's time
    run.exchange_s[::70] += 5e-3
    fit = fit_time_model(run)
    assert (fit.replica_s, fit.row_s, fit.layer_fixed_s, fit.exchange_row_s) == pytest.approx((W_S, C_S, A_S, B_S),
                                                                                             rel=1e-6)
    check = calibrate({"static": _records(1), "moeless": run}, preset_from_profile("tiny", 1, 8, 2, 64, 128))
    row = check["systems"]["moeless"]
    assert row["stalls"] >= 6 and abs(row["error_without_stalls"]) < 1e-6 < abs(row["error"])
