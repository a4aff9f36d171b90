"""Serverless scaling made visible: each system's live replicas over time beside the trace's arrival rate.

The closed-loop simulator reports, per system, the live weight copies after every iteration and after
every idle gap's keep-alive reclaim (`simulate(...)["timeline"]`). Here they become bench.json's
`timeline` entry: live replicas per model layer (as `replicas.mean_per_layer`), downsampled to at most
`MAX_POINTS` per system without losing a peak or a dip, and the replayed trace's arrivals per second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_POINTS = 500  # per system in bench.json (and the plot)
LONG_TRACE_S = 300.0  # arrivals are counted in 1-s bins up to this span, in 5-s bins beyond


def envelope(times: np.ndarray, values: np.ndarray, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most `limit` points that keep each stretch's lowest and highest value, in time order.

    times, values: [points]. Plotting every k-th point of a step series would drop short dips (scale-in
    in a lull) and bursts; each of limit/2 stretches keeps both its extremes instead."""
    n = int(times.size)
    if n <= limit:
        return np.arange(n)
    stretches = np.array_split(np.arange(n), max(1, limit // 2))
    keep = {int(s[np.argmin(values[s])]) for s in stretches} | {int(s[np.argmax(values[s])]) for s in stretches}
    return np.array(sorted(keep), dtype=np.int64)


def arrival_rate(arrival_s: np.ndarray, end_s: float) -> dict[str, Any]:
    """Requests per second in 1-s bins (5-s bins past LONG_TRACE_S) from 0 to end_s.

    arrival_s: [requests] arrival times of the replayed trace window, seconds from its first request."""
    arrivals = np.asarray(arrival_s, dtype=np.float64)
    span = max(float(end_s), float(arrivals.max()) if arrivals.size else 0.0)
    width = 1.0 if span <= LONG_TRACE_S else 5.0
    edges = width * np.arange(max(1, int(np.ceil(span / width))) + 1)
    counts, _ = np.histogram(arrivals, bins=edges)
    return {"bin_s": width, "t_s": edges[:-1].tolist(), "requests_per_s": (counts / width).tolist()}


def system_timeline(raw: dict[str, list], preset_layers: float, limit: int = MAX_POINTS) -> dict[str, Any]:
    """One system's series: raw = {"t_s": [points], "live_replicas": [points]} (every layer's live copies, as
    `simulate` reports them) -> {"t_s", "live_replicas_per_layer", "points"} downsampled to `limit` points."""
    times = np.asarray(raw["t_s"], dtype=np.float64)
    per_layer = np.asarray(raw["live_replicas"], dtype=np.float64) / preset_layers
    keep = envelope(times, per_layer, limit)
    return {"t_s": times[keep].tolist(), "live_replicas_per_layer": per_layer[keep].tolist(), "points": int(times.size)}


def build_timeline(raw: dict[str, dict[str, list]], preset_layers: float, arrival_s: np.ndarray) -> dict[str, Any] | None:
    """bench.json's `timeline`: per system (raw as `system_timeline`'s) its live replicas per layer over time,
    and the arrival rate over the same span; None when no system reported one."""
    if not raw:
        return None
    systems = {name: system_timeline(series, preset_layers) for name, series in raw.items()}
    end = max((series["t_s"][-1] for series in systems.values() if series["t_s"]), default=0.0)
    return {"systems": systems, "arrival_rate": arrival_rate(arrival_s, end),
            "note": "live weight copies per model layer after each iteration and each idle gap's keep-alive "
                    "reclaim (each system's own closed-loop run), beside the replayed trace's arrivals"}
