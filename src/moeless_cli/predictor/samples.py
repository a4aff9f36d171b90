"""Routing samples for predictor training: plain arrays, split by request, grouped into batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeless_cli.errors import MoelessError


@dataclass(frozen=True)
class RoutingSamples:
    """Tokens whose router inputs were recorded, with what the routers chose for them."""

    router_inputs: np.ndarray  # [samples, layers, hidden] hidden state entering each MoE layer's router
    true_topk: np.ndarray  # [samples, layers, k] expert ids each router selected for the token
    request_ids: np.ndarray  # [samples] request the token belongs to (the unit of the train/test split)
    iteration_ids: np.ndarray  # [samples] profiled iteration (batch) the token ran in; row of the load matrix
    domain_ids: np.ndarray | None = None  # [samples] traffic domain (dataset/profile) of the token's request

    def __post_init__(self) -> None:
        n = self.router_inputs.shape[0]
        if self.domain_ids is None:
            object.__setattr__(self, "domain_ids", np.zeros(n, dtype=np.int64))
        assert self.router_inputs.ndim == 3 and self.true_topk.ndim == 3, "bad sample array ranks"
        assert self.true_topk.shape[:2] == self.router_inputs.shape[:2], "router inputs / top-k mismatch"
        assert self.request_ids.shape == (n,) and self.iteration_ids.shape == (n,), "bad id arrays"

    @property
    def num_samples(self) -> int:
        return int(self.router_inputs.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.router_inputs.shape[1])

    def subset(self, mask: np.ndarray) -> "RoutingSamples":
        """The samples where mask [samples] (bool) is true."""
        return RoutingSamples(
            self.router_inputs[mask], self.true_topk[mask], self.request_ids[mask], self.iteration_ids[mask],
            self.domain_ids[mask],
        )

    @property
    def num_domains(self) -> int:
        return int(np.unique(self.domain_ids).size)


def split_by_request(request_ids: np.ndarray, train_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of whole requests, never of tokens: all tokens of a request land on one side.

    request_ids: [samples] -> (train_mask [samples], test_mask [samples]). Both sides get at least
    one request.
    """
    requests = np.unique(request_ids)
    if requests.size < 2:
        raise MoelessError(
            f"the profile has router samples from {requests.size} request(s); a train/test split by request "
            "needs at least 2 (profile more prompts with `moeless profile --num-prompts N`)"
        )
    shuffled = np.random.default_rng(seed).permutation(requests)
    n_train = int(round(train_share * requests.size))
    n_train = min(max(n_train, 1), requests.size - 1)
    train_mask = np.isin(request_ids, shuffled[:n_train])
    return train_mask, ~train_mask


MIN_BATCH_TOKENS = 8  # batches with fewer sampled tokens are too noisy to score a load against


def iteration_batches(iteration_ids: np.ndarray, min_tokens: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group sample indices by iteration, in iteration order, keeping batches of >= min_tokens.

    iteration_ids: [samples] -> (iterations [batches], index arrays, one per batch). When no
    batch reaches min_tokens, every non-empty batch is kept (a small profile still gets scored).
    """
    order = np.argsort(iteration_ids, kind="stable")
    iterations, starts = np.unique(iteration_ids[order], return_index=True)
    batches = np.split(order, starts[1:]) if order.size else []
    keep = [i for i, b in enumerate(batches) if b.size >= min_tokens] or list(range(len(batches)))
    return iterations[keep], [batches[i] for i in keep]
