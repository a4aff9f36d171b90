"""The models' routers as plain tensors, and how each turns logits into its top-k choice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_FUNCTIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class GateBank:
    """Every MoE layer's linear router (gate), in the model's own routing rule."""

    weight: np.ndarray  # [layers, experts, hidden] router weight; logits = x @ weight[l].T (+ bias)
    bias: np.ndarray | None  # [layers, experts] added to the logits, or None (most families)
    correction: np.ndarray | None  # [layers, experts] added to the scores for top-k selection only (DeepSeek-V3)
    score: str  # "softmax" or "sigmoid": how logits become routing scores
    top_k: int  # experts selected per token
    num_groups: int = 1  # DeepSeek-V3 style group-limited routing: expert groups per layer (1: none)
    top_groups: int = 1  # ... and how many groups a token may choose from

    def __post_init__(self) -> None:
        assert self.weight.ndim == 3, "gate weight must be [layers, experts, hidden]"
        assert self.score in SCORE_FUNCTIONS, f"unknown score function {self.score}"

    @property
    def num_layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.weight.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[2])

    def layer_bias(self, layer: int) -> np.ndarray | None:
        return None if self.bias is None else self.bias[layer]

    def layer_correction(self, layer: int) -> np.ndarray | None:
        return None if self.correction is None else self.correction[layer]


def select_topk(logits, top_k: int, score: str, correction=None, num_groups: int = 1, top_groups: int = 1):
    """The router's top-k choice. logits: [tokens, experts] torch -> ids [tokens, top_k] (int64).

    Softmax is monotonic, so scores only matter where a correction bias shifts them. Group-limited
    routing (DeepSeek-V3) keeps the `top_groups` groups whose two best scores sum highest.
    """
    import torch

    if correction is None and num_groups <= 1:
        return torch.topk(logits, top_k, dim=-1).indices
    scores = torch.sigmoid(logits) if score == "sigmoid" else torch.softmax(logits, dim=-1)
    if correction is not None:
        scores = scores + correction
    if num_groups > 1:
        tokens, experts = scores.shape
        grouped = scores.view(tokens, num_groups, experts // num_groups)  # [tokens, groups, experts/group]
        group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)  # [tokens, groups]
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, torch.topk(group_scores, top_groups, dim=-1).indices, True)
        scores = scores.masked_fill(~keep.repeat_interleave(experts // num_groups, dim=1), float("-inf"))
    return torch.topk(scores, top_k, dim=-1).indices


def selection_margin(logits, top_k: int):
    """How far each logit sits above the token's top-k boundary (midway between the k-th and the
    (k+1)-th largest logit): positive means selected. logits: [tokens, experts] torch -> same shape.

    Whether an expert is chosen depends on the token's other logits, not on its own logit alone;
    the margin is what a per-expert selection probability should be a function of.
    """
    import torch

    if top_k >= logits.shape[-1]:
        return torch.ones_like(logits)
    ranked = torch.topk(logits, top_k + 1, dim=-1).values  # [tokens, k+1]
    return logits - 0.5 * (ranked[:, -2:-1] + ranked[:, -1:])


def gates_from_model(loaded) -> GateBank:
    """Copy every MoE layer's router weights out of a loaded model (moeless_cli.models.LoadedModel).

    The router's linear map is the one parameter of shape [experts, hidden] in the router module
    (its `weight` in most families, a wrapped Linear in Granite); a bias beside it, a DeepSeek /
    ERNIE style `e_score_correction_bias` and DeepSeek-V3's expert groups come along.
    """
    from moeless_cli.errors import MoelessError

    weights, biases, corrections = [], [], []
    shape = (loaded.num_experts, loaded.hidden_size)
    for index in range(loaded.num_moe_layers):
        router = loaded.router(index)
        named = dict(router.named_parameters())
        weight_name = next((n for n, p in named.items() if tuple(p.shape) == shape), None)
        if weight_name is None:
            raise MoelessError(
                f"cannot find the router weight [{shape[0]}, {shape[1]}] of MoE layer {index} "
                f"({type(router).__name__}); predictors need a linear router"
            )
        bias = named.get(weight_name[: -len("weight")] + "bias") if weight_name.endswith("weight") else None
        extras = {**dict(router.named_buffers()), **named}
        correction = next((t for n, t in extras.items() if n.endswith("e_score_correction_bias")), None)
        weights.append(named[weight_name].detach().float().cpu().numpy())
        biases.append(None if bias is None else bias.detach().float().cpu().numpy())
        corrections.append(None if correction is None else correction.detach().float().cpu().numpy().reshape(-1))
    groups = int(getattr(router, "num_group", None) or getattr(router, "n_group", None) or 1)
    top_groups = int(getattr(router, "topk_group", None) or 1)
    return GateBank(
        weight=np.stack(weights),
        bias=None if any(b is None for b in biases) else np.stack(biases),
        correction=None if any(c is None for c in corrections) else np.stack(corrections),
        score="sigmoid" if "sigmoid" in loaded.adapter.scoring else "softmax",
        top_k=loaded.top_k,
        num_groups=groups if loaded.num_experts % groups == 0 else 1,
        top_groups=min(top_groups, groups),
    )
