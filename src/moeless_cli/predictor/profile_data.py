"""From `moeless profile` output to the plain arrays predictor training works on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.predictor.pipeline import RoutingProfile
from moeless_cli.predictor.samples import RoutingSamples

ROUTER_SAMPLES_HINT = "record them with `moeless profile --router-samples K`"


def routing_profile(profile, requests: tuple[int, ...] | None = None) -> RoutingProfile:
    """Router-sampled tokens and the load matrix of a loaded profile (moeless_cli.profiling.Profile).

    requests: only these profile requests (their samples, and the load their tokens put on each
    iteration: the rest is held out for a replay); None: all."""
    if profile.router_inputs is None or profile.router_input_tokens is None or profile.router_inputs.shape[0] == 0:
        kind = "an imported load-only profile" if profile.imported else "profiled without router inputs"
        raise MoelessError(
            f"profile {profile.path} has no router input samples ({kind}); predictors train on them: {ROUTER_SAMPLES_HINT}"
        )
    if profile.topk_ids is None or profile.token_request is None or profile.token_iteration is None:
        raise MoelessError(f"profile {profile.path} has no per-token routing arrays; re-run `moeless profile` on it")
    tokens = profile.router_input_tokens.astype(np.int64)
    sample_requests = profile.token_request[tokens].astype(np.int64)
    domains = None if profile.request_domain is None else profile.request_domain.astype(np.int64)[sample_requests]
    samples = RoutingSamples(
        router_inputs=profile.router_inputs,
        true_topk=profile.topk_ids[tokens].astype(np.int64),
        request_ids=sample_requests,
        iteration_ids=profile.token_iteration[tokens].astype(np.int64),
        domain_ids=domains,
    )
    if requests is None:
        return RoutingProfile(samples=samples, load=profile.load.astype(np.float64))
    keep = np.isin(samples.request_ids, np.asarray(requests, dtype=np.int64))
    if not keep.any():
        raise MoelessError(f"profile {profile.path} has no router samples of the training requests")
    return RoutingProfile(samples=samples.subset(keep), load=requests_load(profile, requests))


def requests_load(profile, requests: tuple[int, ...]) -> np.ndarray:
    """[iterations, layers, experts] token counts of only the given requests' tokens (iterations without
    them stay zero, which the history prior skips)."""
    mine = np.flatnonzero(np.isin(profile.token_request, np.asarray(requests, dtype=np.int64)))
    topk = profile.topk_ids[mine].astype(np.int64)  # [tokens, layers, k]
    load = np.zeros(profile.load.shape, dtype=np.float64)
    iteration = profile.token_iteration[mine].astype(np.int64)[:, None, None]
    layer = np.arange(topk.shape[1])[None, :, None]
    np.add.at(load, (np.broadcast_to(iteration, topk.shape), np.broadcast_to(layer, topk.shape), topk), 1.0)
    return load


def merge_profiles(parts: list[RoutingProfile]) -> RoutingProfile:
    """Several profiles of one model as one: requests, iterations and domains renumbered apart.

    Each (profile, domain) pair becomes its own domain. The load matrices are stacked in order.
    """
    if len(parts) == 1:
        return parts[0]
    request_offset = iteration_offset = 0
    requests, iterations, domains = [], [], []
    for index, part in enumerate(parts):
        s = part.samples
        requests.append(s.request_ids + request_offset)
        iterations.append(s.iteration_ids + iteration_offset)
        domains.append(s.domain_ids + index * 1_000_000)  # a profile's domains stay apart from the next one's
        request_offset += int(s.request_ids.max(initial=-1)) + 1
        iteration_offset += part.load.shape[0]
    domain_ids = np.unique(np.concatenate(domains), return_inverse=True)[1]
    samples = RoutingSamples(
        router_inputs=np.concatenate([p.samples.router_inputs for p in parts]),
        true_topk=np.concatenate([p.samples.true_topk for p in parts]),
        request_ids=np.concatenate(requests),
        iteration_ids=np.concatenate(iterations),
        domain_ids=domain_ids.astype(np.int64),
    )
    return RoutingProfile(samples=samples, load=np.concatenate([p.load for p in parts]))


def check_same_model(train, other, option: str) -> None:
    """Refuse an eval profile recorded on a different model than the training profile."""
    if (train.config_hash, train.num_layers, train.num_experts) != (other.config_hash, other.num_layers, other.num_experts):
        raise MoelessError(
            f"{option} {other.path} was profiled on model {other.model_id} (config hash {other.config_hash}), "
            f"but --profile {train.path} on {train.model_id} (config hash {train.config_hash}); "
            "predictors only transfer within one model"
        )


def model_location(profile) -> str:
    """Where the profiled model lives: the recorded checkpoint path if it still exists, else its id."""
    model = profile.manifest.get("model") or {}
    for key in ("path", "checkpoint", "source"):
        value = model.get(key)
        if isinstance(value, str) and Path(value).is_dir():
            return value
    return str(model["id"])


def default_out(profile_path: str | Path) -> Path:
    """The predictor file's default place: inside the training profile's directory."""
    return Path(profile_path) / "predictor.safetensors"
