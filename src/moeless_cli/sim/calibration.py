"""Calibrate the simulator's time model against serve's runtime, and measure its error.

`moeless bench --mode real` runs every system through serve's runtime with per-layer records
(what each worker computed and how long it took). This module fits the time model's constants on
one system's run (static EP: the calibration run) and predicts every other system's MoE-layer
time from its own recorded dispatches through `ClusterModel.moe_layer` — the same code the
simulator uses — so the error on the held-out systems is the simulator's error on this machine.

The model fitted (the roofline time model with host-copy exchange, see `sim/timemodel.py`):
  worker g's seconds      = w * replicas_g + c * rows_g       (weight read per replica + compute per row)
  dispatch + combine      = a + b * rows                      (fixed per-layer cost + row copies)
  MoE layer               = a + b * rows + max_g(worker g) + measured cold copies
The policy's own decision (which replica serves how many tokens: Python on the host here) is the
control plane; the simulator does not charge it, so it is reported beside the error, not in it.
Glossary: a *row* is one (token, expert) assignment; a *worker* is one expert-parallel device
(a GPU in the simulator, a CPU worker here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.sim.hardware import Hardware
from moeless_cli.sim.presets import ModelPreset
from moeless_cli.sim.timemodel import ClusterModel

OUTLIER_MADS = 5.0  # fit samples further than this many median absolute deviations off are dropped


@dataclass
class LayerRecords:
    """Every MoE layer call of one real run."""

    worker_s: np.ndarray  # [calls, workers] seconds each worker computed
    worker_rows: np.ndarray  # [calls, workers] rows each worker computed
    worker_replicas: np.ndarray  # [calls, workers] replicas each worker ran
    exchange_s: np.ndarray  # [calls] dispatch + combine seconds, the policy's decision excluded
    cold_s: np.ndarray  # [calls] replica copies on the critical path
    decide_s: np.ndarray  # [calls] the policy's decision (control plane)

    @property
    def data_plane_s(self) -> np.ndarray:
        """[calls] measured MoE-layer seconds without the policy's decision: what the simulator models."""
        return self.exchange_s + self.worker_s.max(axis=1, initial=0.0) + self.cold_s

    @property
    def moe_s(self) -> np.ndarray:
        """[calls] measured MoE-layer seconds, as serve reports them."""
        return self.data_plane_s + self.decide_s

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "LayerRecords":
        arrays = {k: np.asarray(doc[k], dtype=np.float64) for k in
                  ("worker_s", "worker_rows", "worker_replicas", "exchange_s", "cold_s", "decide_s")}
        if arrays["worker_s"].ndim != 2 or arrays["worker_s"].shape[0] == 0:
            raise MoelessError("no MoE layer calls were recorded: nothing to calibrate on")
        return cls(**arrays)


@dataclass
class TimeFit:
    """Fitted constants, in seconds."""

    replica_s: float  # w: per replica a worker runs (its weights are read once)
    row_s: float  # c: per (token, expert) row computed
    layer_fixed_s: float  # a: per MoE layer call
    exchange_row_s: float  # b: dispatch + combine per row

    def as_dict(self) -> dict[str, float]:
        return {"replica_us": self.replica_s * 1e6, "row_us": self.row_s * 1e6,
                "layer_fixed_us": self.layer_fixed_s * 1e6, "exchange_row_us": self.exchange_row_s * 1e6}


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x: [n, p], y: [n]. Least squares with every coefficient >= 0 (a negative one is dropped and
    the rest refitted; p is 2 here, so this is exact)."""
    keep = list(range(x.shape[1]))
    while keep:
        coef, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        if (coef >= 0).all():
            out = np.zeros(x.shape[1])
            out[keep] = coef
            return out
        keep.pop(int(np.argmin(coef)))
    return np.zeros(x.shape[1])


def _robust_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`_nonnegative_lstsq`, refitted without samples whose residual is far out (a host stall or a
    preemption on a shared machine is not what the time model describes)."""
    coef = _nonnegative_lstsq(x, y)
    residual = y - x @ coef
    spread = np.median(np.abs(residual - np.median(residual)))
    keep = np.abs(residual - np.median(residual)) <= OUTLIER_MADS * max(spread, 1e-12)
    return _nonnegative_lstsq(x[keep], y[keep]) if keep.sum() >= x.shape[1] else coef


def fit_time_model(records: LayerRecords) -> TimeFit:
    """Least-squares fit of the per-worker and exchange costs on one run's layer calls."""
    busy = records.worker_rows > 0  # [calls, workers]
    x = np.stack([records.worker_replicas[busy], records.worker_rows[busy]], axis=1)  # [samples, 2]
    w, c = _robust_fit(x, records.worker_s[busy])
    rows = records.worker_rows.sum(axis=1)  # [calls]
    a, b = _robust_fit(np.stack([np.ones_like(rows), rows], axis=1), records.exchange_s)
    return TimeFit(float(w), float(c), float(a), float(b))


def calibrated_cluster(fit: TimeFit, preset: ModelPreset, num_workers: int, name: str = "this machine") -> ClusterModel:
    """The simulator's cluster model with the fitted constants as its hardware (roofline time model)."""
    tiny = 1e-15  # a constant fitted to zero: its rate is effectively infinite
    token_bytes = preset.hidden * 2  # timemodel.ACTIVATION_BYTES
    hardware = Hardware(
        name=name, description=f"{name}, calibrated from a real run", memory_gb=0.0,
        tflops=preset.expert_flops_per_token / max(fit.row_s, tiny) / 1e12,
        hbm_gbps=preset.expert_bytes / max(fit.replica_s, tiny) / 1e9,
        fast_link_gbps=1.0, fast_link_group=1, pcie_gbps=1.0, host_gbps=1.0, network_gbps=1.0,
        gpus_per_node=num_workers, usd_per_gpu_hour=0.0, layer_fixed_s=fit.layer_fixed_s,
        # the model charges 2 x rows x token_bytes / rate (dispatch and combine): b = 2 x token_bytes / rate
        host_copy_gbps=2 * token_bytes / max(fit.exchange_row_s, tiny) / 1e9,
    )
    return ClusterModel(hardware, preset, num_workers, "roofline")


def predict_moe_s(cluster: ClusterModel, records: LayerRecords) -> np.ndarray:
    """[calls] the simulator's MoE-layer seconds for each recorded dispatch (+ its measured cold copies)."""
    out = np.zeros(records.worker_s.shape[0])
    workers = np.arange(records.worker_s.shape[1])
    for i, (rows, replicas) in enumerate(zip(records.worker_rows, records.worker_replicas)):
        count = replicas.astype(np.int64)
        gpu = np.repeat(workers, count)  # [replicas] each replica's worker
        tokens = np.repeat(rows / np.maximum(count, 1), count)  # [replicas] a worker's rows spread over its replicas
        out[i] = cluster.moe_layer(gpu, tokens)[0]
    return out + records.cold_s


def calibrate(runs: dict[str, LayerRecords], fit_on: str, preset: ModelPreset) -> dict[str, Any]:
    """Fit on runs[fit_on], predict every run's data plane. Returns {"fit_on", "fit", "hardware", "systems":
    {name: {"real_ms", "data_plane_ms", "sim_ms", "error", "p50_error", "median_abs_layer_error",
    "control_ms", "calls"}}, "held_out_max_abs_error"}; errors are of the simulated data plane."""
    if fit_on not in runs:
        raise MoelessError(f"calibration run {fit_on!r} is missing")
    fit = fit_time_model(runs[fit_on])
    cluster = calibrated_cluster(fit, preset, runs[fit_on].worker_s.shape[1])
    systems = {}
    for name, records in runs.items():
        real, sim = records.data_plane_s, predict_moe_s(cluster, records)
        systems[name] = {
            "real_ms": float(records.moe_s.mean() * 1e3), "data_plane_ms": float(real.mean() * 1e3),
            "sim_ms": float(sim.mean() * 1e3), "error": float(sim.mean() / real.mean() - 1.0),
            "p50_error": float(np.median(sim) / np.median(real) - 1.0),
            "median_abs_layer_error": float(np.median(np.abs(sim - real) / real)),
            "control_ms": float(records.decide_s.mean() * 1e3), "calls": int(real.size),
        }
    held_out = [abs(v["error"]) for k, v in systems.items() if k != fit_on]
    hw = cluster.hardware
    return {"fit_on": fit_on, "fit": fit.as_dict(),
            "hardware": {"tflops": hw.tflops, "weight_read_gbps": hw.hbm_gbps, "host_copy_gbps": hw.host_copy_gbps,
                         "layer_fixed_us": hw.layer_fixed_s * 1e6},
            "systems": systems, "held_out_max_abs_error": max(held_out) if held_out else None}
