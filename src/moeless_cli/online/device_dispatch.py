"""moeless's per-layer split as a GPU runs it: on the device, no host round trip inside the layer.

Glossary: a *replica* is a warm instance (expert, GPU) of one layer; its *column* is its place in
its expert's preference order (`planning.device_split.ReplicaTable`, column 0 first); a *quota* is
the whole tokens a replica serves in one layer call; *token units* are one token's expert compute
(a replica serving t > 0 tokens costs max(entry, tile * ceil(t / tile)) of them: weight streaming
against whole GEMM row tiles, the physical time model's charge).

Four modes, chosen per layer before the gate runs:
- `home`: every token goes to its expert's home replica, where the pinned replicas give every GPU
  E / G of them (`planning/homes.py`): static EP's routing after a load-time renaming of the
  experts, no kernel (`HOME_KERNELS`); available when every expert with tokens has its home warm;
- `primary`: every token goes to its expert's column-0 replica (one gather from a map that follows
  the forecast): `PRIMARY_KERNELS`;
- `shares`: every rank splits its own tokens of an expert over the expert's warm replicas in the
  proportions the forecast's split gave them (local counts only, no collective): `SHARE_KERNELS`
  small kernels. The simulator applies the shares to the layer's global counts (each rank's rounding,
  at most one token per rank and replica, is not modelled);
- `balanced`: one collective of E integers gives every rank the global counts, then
  `device_quotas` (vectorized, a fixed op count; its torch twin is `serving/device_split.py`) gives
  each replica its quota: `BALANCED_KERNELS` kernels plus the collective.
Which: the mode whose layer time (busiest GPU plus its own decision) was lowest on the layer's past
batches of the same size class; every mode is evaluated on the true load after the fact, off the
critical path (a GPU would do it on a side stream, from per-step loads reduced in bulk later, as vLLM's
EPLB records its loads; the simulator learns at once, a small optimism); the first batch of a class
balances when the balanced decision's extra cost is under the straggler a static map would likely leave
(INSURED_SHARE of the batch's mean GPU work: cheap insurance), else takes the cheapest decision (home,
else primary). The layer time compared is the busiest GPU's expert work plus the decision (the
all-to-all, which the split changes less, is left out of the choice).
Serve's runtime runs `primary` and `balanced` on the device (`serving/routing.py`) and chooses between
them by what it measures, not by the model (`MeasuredChoice`: per layer and size class, the mode whose
measured MoE-layer time was lower, the other re-measured now and then).
The preference order (which replica an expert uses first) is set off the critical path, where the
warm set or the forecast changes: each replica's tokens in the cost-aware split of the forecast, every
hosted expert counted at least one token (so first replicas spread weight reads as static EP's layout does).
Every system is charged the kernels its dispatch adds to the router's top-k at `Hardware.kernel_s`
each: static EP and Oracle none, EPLB `EPLB_KERNELS` (vLLM's random replica pick), moeless and
eplb+balanced their mode's.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from moeless_cli.planning.cost_split import busiest_cost, cost_aware_split
from moeless_cli.planning.device_split import DEFAULT_PASSES, ReplicaTable, device_quotas, quotas_to_replicas, replica_table
from moeless_cli.planning.dispatch import round_split

# Kernels of each mode as a device runs them: the decision compiled with torch.compile (inductor), as
# engines compile their model code, fuses elementwise chains. Inductor on this machine generated
# 7 + 6 x passes kernels for scatter-add counts + device_quotas_torch + pair_replica (passes 0, 1, 2, 4:
# 7, 13, 19, 31; 64 experts x 8 GPUs; `benchmarks/bench_dispatch.py --fused` recounts); eager, the same
# decision is tests/test_device_split.py's DECISION_KERNELS ops. Triton on a GPU fuses alike; not measured here.
BALANCED_KERNELS = 7 + 6 * DEFAULT_PASSES
SHARE_KERNELS = 6  # shares mode: counts (a scatter-add), quotas = floor(shares x local counts) + largest
# remainders (a sort), each pair's column by rank (a sort, a searchsorted): counted unfused, an upper bound
PRIMARY_KERNELS = 1  # primary mode: one gather of each pair's replica from the column-0 map
HOME_KERNELS = 0  # home mode: the gate's ids are the homes' names (renamed at load time), as in static EP
EPLB_KERNELS = 3  # vLLM's EPLB: a random index per pair, modulo its expert's replica count, a gather from
# the logical-to-physical map (vllm/distributed/eplb; counted unfused)
MODES = ("adaptive", "balanced", "shares", "primary", "home")
SERVE_MODES = ("balanced", "primary")  # what serve's runtime runs on the device (shares: the simulator's only, so far)
SIZE_CLASSES = 24  # batches grouped by log2 of their token-expert pairs
LEARNING_RATE = 0.3  # weight of the newest batch in a size class's running layer time
SERVE_RETRY_EVERY = 16  # serve re-measures the mode it is not using on every 16th call of a size class
# A class's first batch balances when that costs at most this share of its mean GPU work: the straggler a
# static map leaves on real routing is larger (busiest GPU over the mean, minus 1, with experts e mod 8 on
# 8 GPUs: per-layer medians 0.25-0.74 on the bundled OLMoE-1B-7B counts, prose to code).
INSURED_SHARE = 0.25
# Forecast splits remembered per dispatcher (least recently used out first): a warm set and rounded forecast
# seen before give the same split. Serve (tiny-mixtral, moeless + predictor, 32 requests) repeats 63% of them.
# An entry is ~(3 R + E) x 8 bytes: ~10 MB full at 64 experts on 8 GPUs, ~40 MB at 256 on 64.
FORECAST_MEMO = 4096


def size_class(pairs: int) -> int:
    """A batch's size class: log2 of its token-expert pairs (+1), capped."""
    return min((int(pairs) + 1).bit_length() - 1, SIZE_CLASSES - 1)  # floor(log2(pairs + 1)), in integers


def forecast_split(expert: np.ndarray, gpu: np.ndarray, forecast: np.ndarray, num_gpus: int, entry_tokens: float,
                   tile_tokens: int) -> np.ndarray:
    """expert, gpu: [replicas]; forecast: [experts]. The cost-aware whole-token split of the rounded forecast
    over these replicas: [replicas] (the preference order; host code, off the critical path).
    Every expert with a replica counts at least one token: a forecast rounded to none still sees traffic in
    most batches, and its first replica then lands where a weight read costs least, so the column-0 map
    spreads weight reads over the GPUs as static EP's layout does (small batches pay one read per used expert)."""
    return cost_aware_split(expert, gpu, _whole_forecast(expert, forecast), num_gpus, entry_tokens, tile_tokens)


def _whole_forecast(expert: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """expert: [replicas]; forecast: [experts]. The forecast in whole tokens, at least one per hosted expert,
    none for an expert without a replica here (it waits anyway): [experts]."""
    whole = np.rint(np.maximum(forecast, 0.0))
    hosted = np.zeros(whole.size, dtype=bool)
    hosted[expert] = True
    return np.where(hosted, np.maximum(whole, 1.0), 0.0)


def shares_split(table: ReplicaTable, expert: np.ndarray, preference: np.ndarray, load: np.ndarray) -> np.ndarray:
    """expert, preference: [replicas] (forecast tokens); load: [experts]. Whole tokens per replica
    [replicas] in the forecast's proportions (column 0 takes all of an expert the forecast gave nothing)."""
    totals = np.bincount(expert, weights=preference, minlength=load.size)  # [experts]
    first = np.zeros(expert.size)
    first[table.replica[:, 0][table.replica[:, 0] >= 0]] = 1.0
    share = np.where(totals[expert] > 0, preference / np.maximum(totals[expert], 1e-300), first)
    if not np.array_equal(load, np.rint(load)):  # fractional (a forecast, a test): the proportions themselves
        return share * load[expert]
    return round_split(share * load[expert], expert, load).astype(np.float64)


def primary_split(table: ReplicaTable, expert: np.ndarray, load: np.ndarray) -> np.ndarray:
    """expert: [replicas]; load: [experts]. Every token of an expert on its column-0 replica: [replicas]."""
    tokens = np.zeros(expert.size)
    first = table.replica[:, 0]
    tokens[first[first >= 0]] = load[first >= 0]
    return tokens


def home_split(home: np.ndarray | None, expert: np.ndarray, gpu: np.ndarray, load: np.ndarray) -> np.ndarray | None:
    """home: [experts] home GPUs or None; expert, gpu: [replicas] warm; load: [experts]. Every token of an
    expert on its home replica [replicas], or None when some expert with tokens has no warm home."""
    if home is None:
        return None
    at_home = np.flatnonzero(gpu == home[expert])  # [experts with a warm home] replica indices
    tokens = np.zeros(expert.size)
    tokens[at_home] = load[expert[at_home]]
    if not np.isclose(tokens.sum(), load.sum()):
        return None
    return tokens


@dataclass
class DeviceDispatcher:
    """Per-layer preference tables, mode choice and the modelled cost of each decision."""

    num_layers: int
    num_gpus: int
    entry_tokens: float  # weight read of a replica, in token units
    tile_tokens: int  # GEMM row tile
    token_s: float  # seconds of one token unit
    kernel_s: float  # one small device kernel
    collective_s: float  # one collective of E integers
    mode: str = "adaptive"  # one of MODES
    preference: list[dict[tuple[int, int], float]] = field(default_factory=list)  # per layer: (expert, gpu) -> forecast tokens
    layer_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [layers, SIZE_CLASSES, modes] running layer time
    homes: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> home GPU of each expert [experts]
    _tables: dict[int, tuple[bytes, ReplicaTable, np.ndarray]] = field(default_factory=dict)
    forecast_searches: int = 0  # forecast splits computed, not found in the memo
    _forecast_splits: OrderedDict[bytes, np.ndarray] = field(default_factory=OrderedDict)  # FORECAST_MEMO

    def __post_init__(self) -> None:
        assert self.mode in MODES
        self.preference = [{} for _ in range(self.num_layers)]
        self.layer_s = np.full((self.num_layers, SIZE_CLASSES, len(MODES) - 1), np.nan)

    def decision_s(self, mode: str) -> float:
        """Modelled seconds of one decision in `mode` (MODES but adaptive)."""
        kernels = {"balanced": BALANCED_KERNELS, "shares": SHARE_KERNELS, "primary": PRIMARY_KERNELS,
                   "home": HOME_KERNELS}[mode]
        return kernels * self.kernel_s + (self.collective_s if mode == "balanced" else 0.0)

    def set_home(self, layer: int, home: np.ndarray | None) -> None:
        """home: [experts] each expert's home GPU (`planning.homes.balanced_homes`), or None: no home mode."""
        if home is None:
            self.homes.pop(layer, None)
        else:
            self.homes[layer] = np.asarray(home, dtype=np.int64)

    def prefer(self, layer: int, expert: np.ndarray, gpu: np.ndarray, forecast_tokens: np.ndarray) -> None:
        """expert, gpu, forecast_tokens: [replicas]: the forecast's split, which orders each expert's replicas."""
        self.preference[layer] = {(int(e), int(g)): float(t) for e, g, t in
                                  zip(expert.tolist(), gpu.tolist(), forecast_tokens.tolist())}

    def prefer_forecast(self, layer: int, expert: np.ndarray, gpu: np.ndarray, forecast: np.ndarray) -> None:
        """expert, gpu: [replicas] warm; forecast: [experts]. `prefer` the forecast's split (`forecast_split`),
        remembered by warm set and rounded forecast: its local search costs about a millisecond on the host."""
        expert, gpu = np.asarray(expert, dtype=np.int64), np.asarray(gpu, dtype=np.int64)
        forecast = np.asarray(forecast, dtype=np.float64)
        # [R] + [R] + [E] values: E is fixed, so the key's length gives R
        key = expert.tobytes() + gpu.tobytes() + _whole_forecast(expert, forecast).tobytes()
        tokens = self._forecast_splits.get(key)
        if tokens is None:
            tokens = forecast_split(expert, gpu, forecast, self.num_gpus, self.entry_tokens, self.tile_tokens)
            self.forecast_searches += 1
            self._forecast_splits[key] = tokens
            if len(self._forecast_splits) > FORECAST_MEMO:
                self._forecast_splits.popitem(last=False)
        else:
            self._forecast_splits.move_to_end(key)
        self.prefer(layer, expert, gpu, tokens)

    def table(self, layer: int, expert: np.ndarray, gpu: np.ndarray, num_experts: int) -> tuple[ReplicaTable, np.ndarray]:
        """The device's replica table for the warm set (expert, gpu): [replicas], and each replica's
        forecast tokens [replicas]. Rebuilt when either changes (on a GPU: when a copy lands, an instance
        retires or a forecast arrives, off the critical path)."""
        wanted = self.preference[layer]
        preference = np.array([wanted.get(k, 0.0) for k in zip(expert.tolist(), gpu.tolist())], dtype=np.float64)
        key = np.concatenate([expert, gpu]).astype(np.int64).tobytes() + preference.tobytes()
        cached = self._tables.get(layer)
        if cached is None or cached[0] != key:
            cached = (key, replica_table(expert, gpu, num_experts, self.num_gpus, preference), preference)
            self._tables[layer] = cached
        return cached[1], cached[2]

    def split(self, layer: int, expert: np.ndarray, gpu: np.ndarray, load: np.ndarray) -> tuple[np.ndarray, float]:
        """expert, gpu: [replicas] warm; load: [experts] whole counts. Tokens per replica [replicas] and the
        decision's modelled seconds. Learns, after the fact, what every mode would have cost."""
        table, preference = self.table(layer, expert, gpu, load.size)
        if not np.array_equal(load, np.rint(load)):  # not a gate's counts: nothing to balance on the device
            return shares_split(table, expert, preference, load), self.decision_s("shares")
        pairs = int(np.rint(load).sum())
        size = size_class(pairs)
        splits = self._splits(table, expert, preference, load)
        home = home_split(self.homes.get(layer), expert, gpu, load)
        if home is not None:
            splits["home"] = home
        allowed = tuple(m for m in MODES[1:] if m in splits)
        chosen = self._choose(layer, size, allowed)
        if chosen is None:  # no evidence on this size class yet
            chosen = self._first(table, pairs, allowed)
        self._learn(layer, size, gpu, splits)
        return splits[chosen], self.decision_s(chosen)

    def _splits(self, table: ReplicaTable, expert: np.ndarray, preference: np.ndarray,
                load: np.ndarray) -> dict[str, np.ndarray]:
        """load: [experts] whole counts. Every mode's tokens per replica [replicas]."""
        counts = np.rint(load).astype(np.int64)
        return {"balanced": quotas_to_replicas(device_quotas(counts, table, self.entry_tokens, self.tile_tokens),
                                               table).astype(np.float64),
                "shares": shares_split(table, expert, preference, load),
                "primary": primary_split(table, expert, load)}

    def _choose(self, layer: int, size: int, allowed: tuple[str, ...]) -> str | None:
        """The fixed mode, or (adaptive) the allowed mode with the lowest running layer time on this size class;
        None while some allowed mode has no evidence there (each class's first batch, every run)."""
        if self.mode != "adaptive":
            return self.mode if self.mode in allowed else "primary"  # home without homes: the nearest map
        seen = self.layer_s[layer, size, [MODES.index(m) - 1 for m in allowed]]
        if np.isnan(seen).any():
            return None
        return allowed[int(np.argmin(seen))]  # ties: the earlier mode (balanced, shares, primary, home)

    def _first(self, table: ReplicaTable, pairs: int, allowed: tuple[str, ...]) -> str:
        """No evidence on this size class yet (its first batch, every run): balanced when what its decision costs
        beyond the cheapest one is at most INSURED_SHARE of the batch's mean GPU work, else the cheapest decision
        (home, else primary). The work is known before the gate only in bulk: its pairs, or the weight reads of
        the experts it can touch (at most one per pair), whichever is more, over G GPUs."""
        cheapest = min(allowed, key=self.decision_s)
        premium = self.decision_s("balanced") - self.decision_s(cheapest)
        touched = min(pairs, int((table.replica[:, 0] >= 0).sum()))
        mean_work_s = max(pairs, touched * self.entry_tokens) * self.token_s / self.num_gpus
        return "balanced" if "balanced" in allowed and premium <= INSURED_SHARE * mean_work_s else cheapest

    def _learn(self, layer: int, size: int, gpu: np.ndarray, splits: dict[str, np.ndarray]) -> None:
        """Running layer time of every mode on this size class: busiest GPU plus the mode's decision."""
        for i, mode in enumerate(MODES[1:]):
            if mode not in splits:  # not available on this batch
                continue
            busiest = busiest_cost(gpu, splits[mode], self.num_gpus, self.entry_tokens, self.tile_tokens)
            seconds = busiest * self.token_s + self.decision_s(mode)
            old = self.layer_s[layer, size, i]
            self.layer_s[layer, size, i] = seconds if np.isnan(old) else (1 - LEARNING_RATE) * old + LEARNING_RATE * seconds


@dataclass
class MeasuredChoice:
    """serve's device-split mode per layer and size class, by measured MoE-layer wall time: a class's first
    calls try each mode in turn; then the faster mode so far runs, and every SERVE_RETRY_EVERY-th call the other
    (a deployment's costs, decision included, are what they measure, whatever the model says). Plain lists:
    it runs twice on every MoE-layer call, where numpy's per-call overhead on two numbers was most of its cost."""

    num_layers: int
    modes: tuple[str, ...] = SERVE_MODES  # the modes chosen among; one mode: always that one
    # [layers][SIZE_CLASSES][modes] running time, None until measured
    seconds: list[list[list[float | None]]] = field(default_factory=list)
    calls: list[list[int]] = field(default_factory=list)  # [layers][SIZE_CLASSES] calls so far

    def __post_init__(self) -> None:
        assert self.modes and all(m in SERVE_MODES for m in self.modes)
        self.seconds = [[[None] * len(self.modes) for _ in range(SIZE_CLASSES)] for _ in range(self.num_layers)]
        self.calls = [[0] * SIZE_CLASSES for _ in range(self.num_layers)]

    def mode(self, layer: int, pairs: int) -> str:
        """The mode of the next call of `layer` with `pairs` token-expert pairs."""
        size = size_class(pairs)
        seen = self.seconds[layer][size]
        if None in seen:
            return self.modes[seen.index(None)]
        best = min(range(len(seen)), key=seen.__getitem__)
        if len(self.modes) > 1 and self.calls[layer][size] % SERVE_RETRY_EVERY == SERVE_RETRY_EVERY - 1:
            return self.modes[(best + 1) % len(self.modes)]
        return self.modes[best]

    def record(self, layer: int, pairs: int, mode: str, seconds: float) -> None:
        """A call of `layer` with `pairs` pairs ran in `mode` and took `seconds` (decision, exchange and experts)."""
        size = size_class(pairs)
        self.calls[layer][size] += 1
        seen, i = self.seconds[layer][size], self.modes.index(mode)
        seen[i] = seconds if seen[i] is None else (1 - LEARNING_RATE) * seen[i] + LEARNING_RATE * seconds
