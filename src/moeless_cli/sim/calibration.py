"""Calibrate the simulator's time model against serve's runtime, and measure its error.

`moeless bench --mode real` runs every system through serve's runtime with per-layer records
(what each worker computed and how long it took). This module fits the time model's constants on
real runs and predicts a run's MoE-layer times from its own recorded dispatches through
`ClusterModel.moe_layer` — the same code the simulator uses. Validation is leave-one-system-out:
each system is predicted by constants fitted on the other systems' runs only, so its error is the
simulator's error on a run it has not seen.

The model fitted (the roofline time model with host-copy exchange, see `sim/timemodel.py`):
  worker g's seconds      = w * replicas_g + c * rows_g       (weight read per replica + compute per row)
  MoE layer               = a + b * rows + max_g(worker g) + measured cold copies
Fitted to the layer times themselves (the slowest worker's noise lifts the layer above the mean
worker's; fitting the parts alone underestimates it): start from per-worker and exchange fits,
then alternate between finding each call's slowest modelled worker and a least-squares fit of
(1, rows, its replicas, its rows) to the layer time. Host stalls far out are dropped from fits.
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
from moeless_cli.sim.timemodel import ACTIVATION_BYTES, ClusterModel

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
    def concat(cls, runs: list["LayerRecords"]) -> "LayerRecords":
        """Every call of several runs (same workers) as one set of records."""
        fields = ("worker_s", "worker_rows", "worker_replicas", "exchange_s", "cold_s", "decide_s")
        return cls(*[np.concatenate([getattr(run, f) for run in runs]) for f in fields])

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
    """x: [n, p], y: [n]. Least squares with every coefficient >= 0: the most negative one is
    dropped (set to 0) and the rest refitted until none is negative. A shortcut of the active-set
    method, exact for p = 2; with p = 4 (the layer fit) close enough for constants that are all
    positive in practice, and it keeps the dependencies to numpy."""
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
    keep = ~_far_out(y - x @ coef)
    return _nonnegative_lstsq(x[keep], y[keep]) if keep.sum() >= x.shape[1] else coef


def _far_out(residual: np.ndarray) -> np.ndarray:
    """[n] True where a residual is more than OUTLIER_MADS median absolute deviations from the median."""
    centre = np.median(residual)
    spread = np.median(np.abs(residual - centre))
    return np.abs(residual - centre) > OUTLIER_MADS * max(spread, 1e-12)


def fit_time_model(records: LayerRecords, rounds: int = 6) -> TimeFit:
    """Fit the time model to the recorded layer calls' data-plane times (see the module docstring)."""
    busy = records.worker_rows > 0  # [calls, workers]
    x = np.stack([records.worker_replicas[busy], records.worker_rows[busy]], axis=1)  # [samples, 2]
    w, c = _robust_fit(x, records.worker_s[busy])
    rows = records.worker_rows.sum(axis=1)  # [calls]
    a, b = _robust_fit(np.stack([np.ones_like(rows), rows], axis=1), records.exchange_s)
    layer_s = records.data_plane_s - records.cold_s  # [calls] what the model must reproduce
    calls = np.arange(rows.size)
    for _ in range(rounds):
        work = np.where(busy, w * records.worker_replicas + c * records.worker_rows, -1.0)  # [calls, workers]
        slowest = np.argmax(work, axis=1)  # [calls] the worker the model says the layer waits for
        x = np.stack([np.ones_like(rows), rows, records.worker_replicas[calls, slowest],
                      records.worker_rows[calls, slowest]], axis=1)  # [calls, 4]
        a, b, w, c = _robust_fit(x, layer_s)
    return TimeFit(float(w), float(c), float(a), float(b))


def calibrated_cluster(fit: TimeFit, preset: ModelPreset, num_workers: int, name: str = "this machine") -> ClusterModel:
    """The simulator's cluster model with the fitted constants as its hardware (roofline time model)."""
    tiny = 1e-15  # a constant fitted to zero: its rate is effectively infinite
    token_bytes = preset.hidden * ACTIVATION_BYTES
    hardware = Hardware(
        name=name, description=f"{name}, calibrated on real runs", memory_gb=0.0,
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


def calibrate(runs: dict[str, LayerRecords], preset: ModelPreset) -> dict[str, Any]:
    """Leave-one-system-out: each run predicted by the time model fitted on all the others.

    Returns {"method", "fit" (on every run, for display), "hardware", "systems": {name: {"real_ms",
    "data_plane_ms", "sim_ms", "error", "error_without_stalls", "stalls", "p50_error",
    "median_abs_layer_error", "control_ms", "calls"}}, "max_abs_error", "max_abs_error_without_stalls"};
    errors are of the simulated data plane against the measured one. A stall is a call the host held
    far longer than the model says (5 MADs of the residuals out): an OS preemption or a collection.
    """
    if len(runs) < 2:
        raise MoelessError("the simulator check needs at least two real runs (one is held out at a time)")
    widths = {run.worker_s.shape[1] for run in runs.values()}
    if len(widths) != 1:
        raise MoelessError(f"real runs with different worker counts {sorted(widths)} cannot be calibrated together")
    num_workers = widths.pop()
    systems = {}
    for name, records in runs.items():
        fit = fit_time_model(LayerRecords.concat([run for other, run in runs.items() if other != name]))
        real, sim = records.data_plane_s, predict_moe_s(calibrated_cluster(fit, preset, num_workers), records)
        calm = ~_far_out(real - sim)  # [calls] False for host stalls (the same rule as in fitting)
        systems[name] = {
            "real_ms": float(records.moe_s.mean() * 1e3), "data_plane_ms": float(real.mean() * 1e3),
            "sim_ms": float(sim.mean() * 1e3), "error": float(sim.mean() / real.mean() - 1.0),
            "error_without_stalls": float(sim[calm].mean() / real[calm].mean() - 1.0),
            "stalls": int((~calm).sum()),
            "p50_error": float(np.median(sim) / np.median(real) - 1.0),
            "median_abs_layer_error": float(np.median(np.abs(sim - real) / real)),
            "control_ms": float(records.decide_s.mean() * 1e3), "calls": int(real.size),
        }
    fit = fit_time_model(LayerRecords.concat(list(runs.values())))
    hw = calibrated_cluster(fit, preset, num_workers).hardware
    return {"method": "leave-one-system-out", "fit": fit.as_dict(),
            "hardware": {"tflops": hw.tflops, "weight_read_gbps": hw.hbm_gbps, "host_copy_gbps": hw.host_copy_gbps,
                         "layer_fixed_us": hw.layer_fixed_s * 1e6},
            "systems": systems, "max_abs_error": max(abs(v["error"]) for v in systems.values()),
            "max_abs_error_without_stalls": max(abs(v["error_without_stalls"]) for v in systems.values())}
