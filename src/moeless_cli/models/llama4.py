"""Llama-4 MoE blocks, made to call their experts the way serve's expert-parallel module expects.

`Llama4TextMoe.forward` (transformers 5) differs from every other family:
- its router returns `(scores [T, E], logits [T, E])`: the top-k of the logits, their sigmoid at the
  chosen experts and 0 elsewhere (no renormalisation; the released models use top-1);
- it scales the expert's *input* by the score, `expert_e(score[t, e] * x[t])`, and runs every expert
  on every token (`Llama4TextExperts` on `[E * T, H]`; unchosen experts see a zero row and give 0);
- its experts hold `gate_up_proj [E, H, 2I]` and `down_proj [E, I, H]` stored [in, out], with the GLU
  `up * act(gate)` on the two halves, no biases;
- a shared expert (a plain GLU MLP) runs on every token and the routed outputs are added to it.

Serve swaps the experts module for one called as `(hidden [T, H], top_k_index [T, k], top_k_weights
[T, k])` that weights each expert's *output*. `standardise` binds a block forward that keeps
Llama-4's math: one row per (token, slot), multiplied by its score before the experts (the same
multiplication the model does), routed to its single expert with weight 1.0 (exact), the slots
summed in ascending expert id, then added to the shared expert's output as the model adds them.
For top-1 and top-2 the result is the model's bit for bit (a sum with exact zeros, or of two terms,
does not depend on order); for top-k >= 3 the order of the dense sum is torch's.
"""

from __future__ import annotations

import types
from typing import Any, Callable


def _routed_forward(block: Any, hidden_states: Any, router_top_k: Callable[[Any, int], Any]) -> Any:
    """hidden_states: [..., H] -> ([T, H] block output, router logits [T, E]), as Llama4TextMoe.forward."""
    import torch

    hidden_states = hidden_states.reshape(-1, block.hidden_dim)
    router_scores, router_logits = block.router(hidden_states)
    num_tokens, k = hidden_states.shape[0], block.top_k
    top_k_index = router_top_k((router_scores, router_logits), k).sort(dim=1).values  # [T, k] ascending id
    top_k_weights = router_scores.gather(1, top_k_index)  # [T, k] the sigmoid scores the model uses
    rows = hidden_states if k == 1 else hidden_states.repeat_interleave(k, dim=0)  # [T*k, H] (token, slot)
    pairs = rows * top_k_weights.reshape(-1, 1)  # the model scales the expert's input
    ones = torch.ones_like(top_k_weights).reshape(-1, 1)
    routed = block.experts(pairs, top_k_index.reshape(-1, 1), ones)  # [T*k, H]
    out = block.shared_expert(hidden_states)
    out.add_(routed.view(num_tokens, k, -1).sum(dim=1))
    return out, router_logits


def _mark_fused_layout(experts: Any) -> None:
    """The layout flags transformers' `use_experts_implementation` sets on other families' experts."""
    experts.has_gate = True  # gate_up_proj, GLU on its two halves (the default `_apply_gate`)
    experts.has_bias = False
    experts.is_transposed = True  # [in, out]: x @ W


def standardise(loaded: Any) -> Callable[[], None]:
    """Bind the serving forward onto every MoE block of a loaded Llama-4 model; returns the undo."""
    block_path = loaded.adapter.router_path.rpartition(".")[0]  # feed_forward: the router's parent
    top_k = loaded.adapter.router_top_k
    blocks = [loaded.decoder_layer(layer).get_submodule(block_path) for layer in range(loaded.num_moe_layers)]
    for block in blocks:
        _mark_fused_layout(block.experts)
        block.forward = types.MethodType(lambda self, hidden: _routed_forward(self, hidden, top_k), block)

    def undo() -> None:
        for block in blocks:
            block.__dict__.pop("forward", None)  # the class's own forward again

    return undo
