"""Recorded routing, replayed per batch: which experts the tokens of a simulated iteration choose.

Trace request i plays recorded request i mod R. Its prefill chunks read the recorded prompt tokens
cyclically (a trace prompt is usually longer than a recorded one); decode step j reads recorded
decode token j mod D (prompt tokens when nothing was decoded). The preset's layer l uses recorded
layer l mod L (so only the L recorded layers are simulated, each standing for its `multiplicity`
preset layers); with f times more experts each recorded expert e becomes experts e + k E
(k = a fixed hash of token, layer and rank, in 0..f-1).

Forecasts come from the predictor applied to the same tokens' recorded router inputs (the layer
before, d = 1); so with a predictor only tokens whose router inputs were kept are replayed. A preset
with a smaller top-k than the recording keeps each token's first (highest-weight) recorded experts,
and the forecasts of the recorded top-k are scaled by preset k / recorded k.

Held-out replay: `held_out_requests` splits the profile's requests into the ones everything that
learns sees (plan, spares, EPLB's first plan, predictors) and the ones replayed; `build_routing`
with `requests` keeps only some, and `history` carries the training loads into the replay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from moeless_cli.errors import MoelessError


@dataclass
class TokenTable:
    """Per-token values [tokens, layers, experts] with each request's prompt tokens as prefix sums."""

    values: np.ndarray  # [tokens, layers, experts]
    prompt_cum: list[np.ndarray] = field(default_factory=list)  # per request: [prompt + 1, layers, experts]

    @classmethod
    def build(cls, values: np.ndarray, prompts: list[np.ndarray]) -> "TokenTable":
        cums = []
        for idx in prompts:
            cum = np.zeros((idx.size + 1, *values.shape[1:]), dtype=np.float64)
            np.cumsum(values[idx], axis=0, out=cum[1:])
            cums.append(cum)
        return cls(values, cums)

    def prompt_sum(self, request: int, start: int, count: int) -> np.ndarray:
        """Sum over `count` prompt tokens of `request` from position `start`, cycling: [layers, experts]."""
        cum = self.prompt_cum[request]
        length = cum.shape[0] - 1
        full, rest = divmod(count, length)
        a = start % length
        out = full * cum[length]
        if a + rest <= length:
            return out + cum[a + rest] - cum[a]
        return out + (cum[length] - cum[a]) + cum[a + rest - length]


@dataclass
class RecordedRouting:
    num_layers: int  # recorded (simulated) layers
    num_experts: int  # experts after splitting (the preset's)
    split: int  # f: preset experts per recorded expert
    multiplicity: list[int]  # per recorded layer: preset layers it stands for
    prompts: list[np.ndarray]  # per recorded request: token indices of its prompt, in order
    decodes: list[np.ndarray]  # per recorded request: token indices of its decode steps
    truth: TokenTable  # one-hot routing [tokens, layers, preset experts]
    request_ids: np.ndarray  # [requests] the profile's id of each replayed request
    forecasts: dict[str, TokenTable] = field(default_factory=dict)  # method -> [tokens, layers, recorded experts]
    forecast_layers: list[int] = field(default_factory=list)  # layers the predictor covers (d = 1)
    forecast_scale: float = 1.0  # preset top-k / recorded top-k: a forecast's counts in the preset's terms
    history: np.ndarray | None = None  # [layers, experts] loads known before serving (read-only, shared by every
    # system's run); None: this routing's own tokens (in-sample), else the training requests' (`with_history`)

    def __post_init__(self) -> None:
        if self.history is None:
            self.history = self.truth.values.sum(axis=0).astype(np.float64)
        self.history.setflags(write=False)

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    def with_history(self, history: np.ndarray) -> "RecordedRouting":
        """The same replay with what was known before serving taken from elsewhere: history [layers, experts]
        (the training requests' loads, for a held-out replay)."""
        return dataclasses.replace(self, history=np.array(history, dtype=np.float64))

    def decode_token(self, request: int, step: int) -> int:
        decodes = self.decodes[request]
        if decodes.size:
            return int(decodes[step % decodes.size])
        prompt = self.prompts[request]
        return int(prompt[step % prompt.size])

    def batch(self, table: TokenTable, prefill: list[tuple[int, int, int]], decode: list[tuple[int, int]]) -> np.ndarray:
        """prefill: (request, start, count); decode: (request, step). Summed values [layers, experts]."""
        out = np.zeros(table.values.shape[1:])
        for request, start, count in prefill:
            out += table.prompt_sum(request, start, count)
        if decode:
            idx = np.fromiter((self.decode_token(r, s) for r, s in decode), dtype=np.int64, count=len(decode))
            out += table.values[idx].sum(axis=0)
        return out

    def sample_batches(self, count: int, seed: int = 0) -> np.ndarray:
        """[count, layers, experts] loads of sample batches from the recorded requests, for planning spare
        replicas: half decode steps of 1-8 requests, half prefill chunks of 16-512 tokens of one request."""
        rng = np.random.default_rng(seed)
        out = np.zeros((count, self.num_layers, self.num_experts))
        for i in range(count):
            if i % 2 == 0:
                size = int(rng.choice([1, 2, 4, 8]))
                decode = [(int(r), int(rng.integers(0, 1 << 16))) for r in rng.integers(0, self.num_requests, size)]
                out[i] = self.batch(self.truth, [], decode)
            else:
                request, start = int(rng.integers(0, self.num_requests)), int(rng.integers(0, 1 << 16))
                out[i] = self.batch(self.truth, [(request, start, int(rng.choice([16, 64, 256, 512])))], [])
        return out

    def fold(self, load: np.ndarray) -> np.ndarray:
        """Preset-expert loads [..., E * f] -> recorded-expert loads [..., E]."""
        return load.reshape(*load.shape[:-1], self.split, -1).sum(axis=-2)

    def unfold(self, load: np.ndarray) -> np.ndarray:
        """Recorded-expert forecast [..., E] -> preset experts [..., E * f] (even split, scaled to the preset's top-k)."""
        return np.concatenate([load * (self.forecast_scale / self.split)] * self.split, axis=-1)


def _replay_tokens(profile, preset_experts: int, preset_top_k: int, router_inputs: bool) -> tuple[np.ndarray, int]:
    """Check the profile can be replayed on the preset; returns (token indices replayed [n], split f).
    router_inputs: only tokens whose router inputs were kept (the predictor's forecasts need them)."""
    if profile.topk_ids is None or profile.token_request is None or profile.token_phase is None:
        raise MoelessError(
            f"profile {profile.path} has no per-token routing (an imported profile?); record one with `moeless profile`"
        )
    k = profile.topk_ids.shape[2]
    if k < preset_top_k:
        raise MoelessError(f"the profile routes top-{k}, the preset top-{preset_top_k}: pick a model with at least "
                           "the preset's top-k")
    experts = profile.num_experts
    if preset_experts % experts:
        raise MoelessError(
            f"the preset has {preset_experts} experts, not a multiple of the profile's {experts}: "
            "pick a model whose expert count divides the preset's"
        )
    if not router_inputs:
        return np.arange(profile.topk_ids.shape[0]), preset_experts // experts
    if profile.router_inputs is None or profile.router_input_tokens is None:
        raise MoelessError(f"profile {profile.path} kept no router inputs: the predictor cannot be replayed on it")
    return profile.router_input_tokens.astype(np.int64), preset_experts // experts


def _split_experts(topk: np.ndarray, universe: np.ndarray, experts: int, split: int) -> np.ndarray:
    """topk: [n, layers, k] recorded experts of tokens universe: [n]. Each becomes expert e + j E, j a
    fixed hash of token, layer and rank in 0..f-1: [n, layers, k]."""
    if split <= 1:
        return topk
    n, sim_layers, k = topk.shape
    token = universe[:, None, None]
    layer = np.arange(sim_layers)[None, :, None]
    rank = np.arange(k)[None, None, :]
    topk = topk + experts * ((token * 40503 + layer * 977 + rank * 131 + (topk * 7)) % split)
    assert topk.shape == (n, sim_layers, k)
    return topk


def _requests(profile, universe: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per recorded request: positions in universe: [n] of its prompt tokens and of its decode steps, in
    order; and the requests' profile ids: [requests]."""
    request = profile.token_request[universe]
    phase = profile.token_phase[universe]
    order = np.argsort(profile.token_position[universe] if profile.token_position is not None else universe, kind="stable")
    prompts, decodes, ids = [], [], []
    for r in np.unique(request).tolist():
        mine = order[request[order] == r]
        prompt, decode = mine[phase[mine] == 0], mine[phase[mine] == 1]
        if prompt.size == 0:
            prompt = decode
        if prompt.size:
            prompts.append(prompt)
            decodes.append(decode)
            ids.append(r)
    if not prompts:
        raise MoelessError(f"profile {profile.path} has no tokens to replay")
    return prompts, decodes, np.asarray(ids, dtype=np.int64)


def _add_forecasts(routing: RecordedRouting, profile, predictor, experts: int, universe: np.ndarray) -> None:
    """Both methods' forecasts (d = 1) of the replayed tokens universe: [n], from their recorded router inputs."""
    tokens = profile.router_input_tokens
    order = np.argsort(tokens, kind="stable")
    rows = order[np.searchsorted(tokens[order], universe)]  # each replayed token's sample
    hidden = profile.router_inputs[rows].astype(np.float32)  # [n, layers, hidden], aligned with the replayed tokens
    sim_layers, num_tokens = routing.num_layers, routing.truth.values.shape[0]
    layers = [t for t in predictor.layers(1) if 1 <= t < sim_layers]
    for method in ("paper", "moeless"):
        values = np.zeros((num_tokens, sim_layers, experts), dtype=np.float32)
        for t in layers:
            values[:, t] = predictor.token_counts(hidden[:, t - 1], t, 1, method)
        routing.forecasts[method] = TokenTable.build(values, routing.prompts)
    routing.forecast_layers = layers


def build_routing(profile, preset_layers: int, preset_experts: int, preset_top_k: int, predictor=None,
                  requests: np.ndarray | None = None) -> RecordedRouting:
    """From a loaded profile (and optionally a LoadPredictor trained on it). requests: [n] profile request
    ids to replay (None: every request)."""
    universe, split = _replay_tokens(profile, preset_experts, preset_top_k, predictor is not None)
    if requests is not None:
        universe = universe[np.isin(profile.token_request[universe], requests)]
    sim_layers = min(profile.topk_ids.shape[1], preset_layers)
    multiplicity = [len(range(layer, preset_layers, sim_layers)) for layer in range(sim_layers)]
    # The recorder keeps a router's top-k in weight order: a smaller preset top-k keeps the heaviest.
    topk = profile.topk_ids.astype(np.int64)[universe, :sim_layers, :preset_top_k]  # [n, L, k]
    topk = _split_experts(topk, universe, profile.num_experts, split)
    truth = np.zeros((universe.size, sim_layers, preset_experts), dtype=np.float32)
    np.put_along_axis(truth, topk, 1.0, axis=2)
    prompts, decodes, ids = _requests(profile, universe)
    routing = RecordedRouting(sim_layers, preset_experts, split, multiplicity, prompts, decodes,
                              TokenTable.build(truth, prompts), ids,
                              forecast_scale=preset_top_k / profile.topk_ids.shape[2])
    if predictor is not None:
        _add_forecasts(routing, profile, predictor, profile.num_experts, universe)
    return routing


def held_out_requests(domains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a profile's requests into training and replay, deterministically, keeping each domain's order:
    the first half (rounded down) of each domain's requests train, the rest are replayed. For an
    interleaved set (`mix`) that is the first half of all requests; for a phased one (`shift`) both
    sides keep every phase, in order.

    domains: [requests] domain index of each profile request. Returns (training ids, replay ids), sorted.
    """
    train = []
    for domain in np.unique(domains).tolist():
        mine = np.flatnonzero(domains == domain)
        train.extend(mine[: mine.size // 2].tolist())
    train_ids = np.sort(np.asarray(train, dtype=np.int64))
    replay_ids = np.setdiff1d(np.arange(domains.size), train_ids)
    if train_ids.size == 0 or replay_ids.size == 0:
        raise MoelessError(f"{domains.size} recorded request(s) cannot be split into training and replay; "
                           "profile more prompts (--num-prompts) or use --in-sample")
    return train_ids, replay_ids
