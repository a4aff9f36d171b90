"""Per-expert math of the model's own fused experts module, and the host-memory weight store.

transformers 5 families keep every expert of a layer in one fused module with 3-D parameters
(`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`, optional biases; GPT-OSS and Llama-4 store them
transposed) and flags set by `use_experts_implementation` (has_gate, has_bias, is_transposed; the
Llama-4 serve shim sets them too). We compute one expert with exactly the forward's operations, on
that expert's slice of the weights, and combine the weighted outputs the way the model's experts
implementation does (`config._experts_implementation`): transformers' default `grouped_mm` (and
`batched_mm`) sums each token's k outputs in slot order in the routing weights' precision (fp32 for
most routers) and rounds once; `eager` adds them one expert at a time in the hidden dtype. The two
differ in bf16 (and in fp32 for top-k >= 3), so copying the right one keeps the tokens identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from moeless_cli.errors import MoelessError

WEIGHT_NAMES = ("gate_up_proj", "up_proj", "down_proj", "gate_up_proj_bias", "up_proj_bias", "down_proj_bias")


@dataclass
class ExpertMath:
    """How one expert of a fused module computes (shared by all its replicas)."""

    names: tuple[str, ...]  # fused parameter names present, each [num_experts, ...]
    has_gate: bool  # gate_up_proj (GLU) rather than up_proj
    has_bias: bool  # *_bias parameters are added after each projection
    is_transposed: bool  # weights stored [in, out] (x @ W) instead of [out, in] (linear)
    apply_gate: Callable[[Any], Any]  # the module's own GLU (or activation) on the first projection
    sums_slots: bool = False  # combine as grouped_mm/batched_mm (per token over its slots) rather than eager

    def __post_init__(self) -> None:
        import torch.nn.functional as F

        self._linear = F.linear  # looked up once: forward runs per replica per MoE layer call
        self._up = "gate_up_proj" if self.has_gate else "up_proj"  # first projection's weight name
        self._up_bias = f"{self._up}_bias"

    def forward(self, weights: dict[str, Any], x: Any) -> Any:
        """x: [tokens, hidden] -> [tokens, hidden], with one expert's weights (name -> tensor)."""
        h = self._project(x, weights[self._up], weights.get(self._up_bias))
        h = self.apply_gate(h)
        return self._project(h, weights["down_proj"], weights.get("down_proj_bias"))

    def _project(self, x: Any, weight: Any, bias: Any) -> Any:
        if self.is_transposed:
            out = x @ weight
            return out if bias is None else out + bias
        return self._linear(x, weight) if bias is None else self._linear(x, weight) + bias

    def combine(self, rows: Any, order: Any, token_of: Any, load: np.ndarray, top_k_weights: Any, like: Any) -> Any:
        """The layer output [T, H] (dtype and device of `like`, [T, H]) from the experts' outputs.

        rows: [T*k, H] output of each (token, slot) pair, pairs in `order`: [T*k] pair positions grouped
        by expert, tokens ascending; token_of: [T*k] token of each; load: [E] pairs per expert;
        top_k_weights: [T, k] the router's weights.
        """
        import torch

        weighted = rows * top_k_weights.reshape(-1, 1).index_select(0, order)  # the model's product, same dtype
        if self.sums_slots:  # grouped_mm: back to (token, slot) order, summed over the slots, rounded once
            num_tokens, k = top_k_weights.shape
            pairs = torch.empty_like(weighted).index_copy_(0, order, weighted)
            return pairs.view(num_tokens, k, -1).sum(dim=1).to(like.dtype)
        # eager: one index_add_ per expert, ascending, each rounded to the hidden dtype. One call for all
        # experts would not do: on CPU it accumulates bf16 rows in fp32 across experts, on GPU atomically.
        final = torch.zeros_like(like)
        for lo, hi in _expert_runs(load):
            final.index_add_(0, token_of[lo:hi], weighted[lo:hi].to(final.dtype))
        return final


def _expert_runs(load: np.ndarray) -> list[tuple[int, int]]:
    """load: [experts]. (start, end) of each loaded expert's pairs in expert-sorted order."""
    ends = np.cumsum(load)
    return [(int(ends[e] - load[e]), int(ends[e])) for e in np.flatnonzero(load)]



def expert_math_of(module: Any, where: str) -> ExpertMath:
    """Read a fused experts module's layout; refuse layouts we cannot compute exactly."""
    import torch

    names = tuple(n for n in WEIGHT_NAMES if isinstance(getattr(module, n, None), torch.Tensor))
    has_gate = bool(getattr(module, "has_gate", "gate_up_proj" in names))
    if getattr(module, "has_post_expert_norm", False):
        raise MoelessError(f"{where}: experts layout of {type(module).__name__} is not supported by serve")
    if "down_proj" not in names or ("gate_up_proj" if has_gate else "up_proj") not in names:
        raise MoelessError(f"{where}: {type(module).__name__} has no fused gate_up/down weights; serve needs them")
    return ExpertMath(
        names=names,
        has_gate=has_gate,
        has_bias=bool(getattr(module, "has_bias", False)),
        is_transposed=bool(getattr(module, "is_transposed", False)),
        apply_gate=_gate_of(module) if has_gate else module.act_fn,
        sums_slots=_experts_implementation(module) != "eager",
    )


def _experts_implementation(module: Any) -> str:
    """How transformers runs this experts module: "grouped_mm" (its default), "batched_mm", "eager", ...
    Modules without the `use_experts_implementation` decorator (Llama-4's) are eager."""
    config = getattr(module, "config", None)
    return str(getattr(config, "_experts_implementation", None) or "eager")


def _gate_of(module: Any) -> Callable[[Any], Any]:
    """The module's own GLU, else transformers' default one (Llama-4's experts define none)."""
    own = getattr(module, "_apply_gate", None)
    if own is not None:
        return own
    act_fn = module.act_fn

    def glu(gate_up: Any) -> Any:
        gate, up = gate_up.chunk(2, dim=-1)  # [gate; up] halves, as `_default_apply_gate` splits them
        return act_fn(gate) * up

    return glu


class HostStore:
    """Every expert's weights in host memory: layer -> fused tensors [num_experts, ...] on the CPU
    (the model's own parameters, not a copy: the local backend keeps the whole model)."""

    def __init__(self) -> None:
        self._layers: dict[int, dict[str, Any]] = {}  # MoE layer -> parameter name -> fused CPU tensor
        self.expert_bytes = 0  # bytes of one expert of one layer

    def add_layer(self, layer: int, module: Any, math: ExpertMath) -> None:
        fused = {}
        for name in math.names:
            tensor = getattr(module, name).detach()
            fused[name] = tensor if tensor.device.type == "cpu" else tensor.cpu()
        self._layers[layer] = fused
        first = next(iter(fused.values()))
        self.expert_bytes = sum(t[0].numel() * t.element_size() for t in fused.values())
        assert all(t.shape[0] == first.shape[0] for t in fused.values()), "fused weights disagree on E"

    def copy_to(self, layer: int, expert: int, device: Any) -> dict[str, Any]:
        """A fresh copy of one expert's weights on `device` (the cold start of a replica)."""
        return {name: t[expert].to(device=device, copy=True) for name, t in self._layers[layer].items()}


def _expert_key(layer: int, expert: int, name: str) -> str:
    return f"{layer}.{expert}.{name}"


def write_host_store(path: Path, modules: list[Any], maths: list[ExpertMath]) -> None:
    """Write every expert of every MoE layer (modules[layer], the fused experts modules) to one
    safetensors file, one tensor per (layer, expert, weight), so a rank reads only what it hosts.
    Written to a temp name and renamed: readers never see a partial store."""
    from safetensors.torch import save_file

    tensors = {}
    for layer, (module, math) in enumerate(zip(modules, maths)):
        for name in math.names:
            fused = getattr(module, name).detach()
            for expert in range(fused.shape[0]):
                tensors[_expert_key(layer, expert, name)] = fused[expert].to("cpu", copy=True).contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


class FileHostStore:
    """The host weight store of the dist backend: the experts in a safetensors file shared by the
    node's ranks through the page cache (memory-mapped, not held by any rank), read one replica at a
    time. A rank's own memory holds only the replicas it hosts."""

    def __init__(self, path: Path, maths: dict[int, ExpertMath]):
        from safetensors import safe_open

        self.path = path  # experts.safetensors (write_host_store)
        self._file = safe_open(str(path), framework="pt")
        self._names = {layer: math.names for layer, math in maths.items()}  # layer -> weight names
        self.expert_bytes = tensor_bytes(self.copy_to(0, 0, "cpu").values())  # bytes of one expert of one layer

    def copy_to(self, layer: int, expert: int, device: Any) -> dict[str, Any]:
        """One expert's weights read from the store onto `device` (the cold start of a replica)."""
        out = {}
        for name in self._names[layer]:
            tensor = self._file.get_tensor(_expert_key(layer, expert, name))
            out[name] = tensor if str(device) == "cpu" else tensor.to(device)
        return out


def release_fused(module: Any, math: ExpertMath) -> None:
    """Free a fused experts module's weights once a rank's replicas come from the host store (the
    module stays: its activation is the experts' own `apply_gate`)."""
    import torch

    for name in math.names:
        old = getattr(module, name)
        setattr(module, name, torch.nn.Parameter(old.new_empty((0,)), requires_grad=False))


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the distinct storages of some tensors (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
