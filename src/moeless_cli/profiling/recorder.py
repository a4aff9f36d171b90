"""Forward hooks on every MoE router: record routing without touching model code.

Each router returns `(router_logits, top_k_weights, top_k_indices)`; the hook keeps the indices the
model itself selected (DeepSeek-style correction biases included) and, when this forward pass has
sampled tokens, the router's input hidden states. Llama-4's router returns no ids: the adapter takes
the top-k of the logits it returns, which is the router's own operation. All counting happens once per forward pass in
`end_forward`, vectorised over layers, so the hooks themselves cost almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moeless_cli.errors import MoelessError
from moeless_cli.models import LoadedModel


@dataclass
class _ForwardState:
    valid: torch.Tensor  # [batch * seq] bool: real (non-padding, unfinished) tokens, flattened
    sample_slots: np.ndarray  # [c] reservoir slot of each sampled token
    sample_local: torch.Tensor  # [c] index into the valid tokens of this pass
    capture_inputs: bool  # whether any token of this pass enters the router-input sample
    indices: list[Any] = field(default_factory=list)  # per MoE layer: [batch * seq, top_k]
    inputs: list[Any] = field(default_factory=list)  # per MoE layer: router input, any shape [..., hidden]


class RoutingRecorder:
    """Collects load, per-token top-k ids and a reservoir sample of router inputs."""

    def __init__(self, loaded: LoadedModel, router_samples: int, seed: int = 0):
        self.loaded = loaded
        self.num_layers = loaded.num_moe_layers
        self.num_experts = loaded.num_experts
        self.top_k = loaded.top_k
        self.id_dtype = np.uint8 if loaded.num_experts <= 256 else np.int16
        self.id_torch_dtype = torch.uint8 if loaded.num_experts <= 256 else torch.int16
        self.router_samples = max(0, int(router_samples))
        self.rng = np.random.default_rng(seed)
        self.tokens_seen = 0
        self.loads: list[np.ndarray] = []  # per pass: [layers, experts]
        self.topk_chunks: list[np.ndarray] = []  # per pass: [valid tokens, layers, top_k]
        self.reservoir: np.ndarray | None = None  # [router_samples, layers, hidden] float16
        self.reservoir_tokens = np.full(self.router_samples, -1, dtype=np.int64)
        self._state: _ForwardState | None = None
        self._handles: list[Any] = []
        self._layer_offsets: torch.Tensor | None = None
        self._checked = False  # router output format verified on the first pass

    # ---- hooks -------------------------------------------------------------------------------
    def attach(self) -> "RoutingRecorder":
        for j in range(self.num_layers):
            router = self.loaded.router(j)
            self._handles.append(router.register_forward_hook(self._make_hook(j)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "RoutingRecorder":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _make_hook(self, layer: int) -> Any:
        router_top_k, top_k = self.loaded.adapter.router_top_k, self.top_k

        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            state = self._state
            if state is None:  # a forward pass we were not asked to record
                return
            state.indices.append(router_top_k(output, top_k))
            if state.capture_inputs:
                state.inputs.append(args[0])

        return hook

    # ---- per forward pass --------------------------------------------------------------------
    def begin_forward(self, valid: torch.Tensor) -> None:
        """valid: [batch, seq] bool, True for tokens to record (padding and finished rows False)."""
        flat = valid.reshape(-1)
        num_valid = int(flat.sum())
        slots, local = self._reservoir_picks(num_valid)
        self._state = _ForwardState(
            valid=flat,
            sample_slots=slots,
            sample_local=torch.as_tensor(local, device=flat.device),
            capture_inputs=len(slots) > 0,
        )

    def end_forward(self) -> np.ndarray:
        """Fold the pass's hook outputs into the records. Returns its load: [layers, experts]."""
        state = self._state
        self._state = None
        assert state is not None and len(state.indices) == self.num_layers, "a router did not run"
        if not self._checked:
            self._check_router_output(state.indices[0])
        indices = torch.stack([ix.reshape(-1, ix.shape[-1]) for ix in state.indices])  # [layers, batch*seq, k]
        assert indices.shape[1] == state.valid.shape[0], "router saw a different token count than the mask"
        indices = indices[:, state.valid]  # [layers, valid, k]
        if self._layer_offsets is None or self._layer_offsets.device != indices.device:
            self._layer_offsets = torch.arange(self.num_layers, device=indices.device) * self.num_experts
        flat_ids = (indices + self._layer_offsets[:, None, None]).reshape(-1)
        load = torch.bincount(flat_ids, minlength=self.num_layers * self.num_experts)
        load_np = load.reshape(self.num_layers, self.num_experts).to(torch.int32).cpu().numpy()
        self.loads.append(load_np)
        self.topk_chunks.append(indices.permute(1, 0, 2).to(self.id_torch_dtype).cpu().numpy())  # [valid, layers, k]
        if state.capture_inputs:
            self._store_samples(state)
        self.tokens_seen += int(indices.shape[1])
        return load_np

    def _check_router_output(self, indices: Any) -> None:
        """Older transformers routers return bare logits: refuse rather than record garbage."""
        ok = (isinstance(indices, torch.Tensor) and not indices.dtype.is_floating_point
              and indices.shape[-1] == self.top_k)
        if not ok:
            import transformers

            raise MoelessError(
                f"the {self.loaded.family} router in transformers {transformers.__version__} does not return "
                f"its top-{self.top_k} expert ids; moeless needs the transformers 5 router API (tested with 5.24)"
            )
        self._checked = True

    # ---- router-input reservoir (Algorithm R, vectorised per pass) -----------------------------
    def _reservoir_picks(self, num_valid: int) -> tuple[np.ndarray, np.ndarray]:
        """Which of this pass's valid tokens enter the sample, and into which slot.

        Token t (global index) takes slot t while the reservoir fills, then slot j ~ U[0, t] when
        j < capacity; a later token that draws the same slot overwrites, as in sequential order.
        """
        capacity = self.router_samples
        if capacity == 0 or num_valid == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if self.tokens_seen + num_valid <= capacity:  # still filling: every token, next free slots
            return self.tokens_seen + np.arange(num_valid), np.arange(num_valid)
        token = self.tokens_seen + np.arange(num_valid)
        slot = np.where(token < capacity, token, self.rng.integers(0, token + 1))
        keep = slot < capacity
        slot, local = slot[keep], np.nonzero(keep)[0]
        # Same slot twice in one pass: the later token wins, as it would sequentially.
        _, last = np.unique(slot[::-1], return_index=True)
        chosen = np.sort(len(slot) - 1 - last)
        return slot[chosen], local[chosen]

    def _store_samples(self, state: _ForwardState) -> None:
        hidden = self.loaded.hidden_size
        if self.reservoir is None:
            self.reservoir = np.zeros((self.router_samples, self.num_layers, hidden), dtype=np.float16)
        slots = state.sample_slots
        if len(slots) == 1 or bool(np.all(np.diff(slots) == 1)):  # filling phase: a plain slice
            slots = slice(int(slots[0]), int(slots[-1]) + 1)
        rows = state.valid.nonzero()[:, 0][state.sample_local]  # [c] flat positions of the samples
        for layer, layer_input in enumerate(state.inputs):
            picked = layer_input.reshape(-1, hidden).index_select(0, rows)  # [c, hidden]
            self.reservoir[slots, layer] = picked.to(torch.float16).cpu().numpy()
        self.reservoir_tokens[slots] = self.tokens_seen + state.sample_local.cpu().numpy()

    # ---- results -----------------------------------------------------------------------------
    def load(self) -> np.ndarray:
        """[iterations, layers, experts] int32."""
        return np.stack(self.loads) if self.loads else np.zeros((0, self.num_layers, self.num_experts), np.int32)

    def topk_ids(self) -> np.ndarray:
        """[tokens, layers, top_k] uint8 (int16 when there are more than 256 experts)."""
        if not self.topk_chunks:
            return np.zeros((0, self.num_layers, self.top_k), self.id_dtype)
        return np.concatenate(self.topk_chunks)

    def router_sample(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(router_inputs [samples, layers, hidden] float16, token index [samples]) sorted by token."""
        if self.reservoir is None:
            return None
        filled = np.nonzero(self.reservoir_tokens >= 0)[0]
        order = filled[np.argsort(self.reservoir_tokens[filled])]
        return self.reservoir[order], self.reservoir_tokens[order]
