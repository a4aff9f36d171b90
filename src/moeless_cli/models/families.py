"""One small adapter per MoE family: where the router and experts live, and how routing works.

Every supported family in transformers 5.x shares one shape: decoder layers at `model.layers`, a
router module whose forward returns `(router_logits, top_k_weights, top_k_indices)` and a fused
experts module holding 3-D weights `[num_experts, ...]`. The adapter only names the attribute paths
and config keys that differ between families, plus what the router does before its top-k (which we
never recompute: hooks read the selected indices from the router's output tuple).

Llama-4 is the exception: its router returns `(scores [T, E], logits [T, E])` without ids (they are
the top-k of the logits, the router's own operation, taken again on the same tensor) and its MoE
block scales each expert's *input* by the score and runs every expert densely. `serve_shim` names
the module in `moeless_cli.models` that makes such blocks call their experts the transformers-5 way
while serving (see `models/llama4.py`).

This module imports nothing heavy, so `moeless models` can list families without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from moeless_cli.errors import MoelessError

ConfigDict = dict[str, Any]


@dataclass(frozen=True)
class FamilyAdapter:
    model_type: str  # config.json "model_type"
    architecture: str  # the *ForCausalLM class transformers builds
    router_path: str  # router module, relative to a decoder layer (forward-hook target)
    experts_path: str  # fused experts module (3-D weights), relative to a decoder layer
    num_experts_key: str  # config key holding the routed-expert count
    top_k_key: str  # config key holding experts per token
    scoring: str  # what the router does before top-k, and how the kept weights are normalised
    # Which decoder layers are MoE according to the config, or None when every layer is. The
    # loader checks this against the modules it actually finds.
    moe_layers_rule: Callable[[ConfigDict, int], list[int]] | None = None
    rule_notes: str = "every decoder layer is MoE"
    extra_notes: str = ""
    indices_position: int | None = -1  # top-k expert ids in the router's output tuple; None: not returned
    logits_position: int = 0  # router logits in its output tuple (the ids are their top-k when not returned)
    shared_expert: bool = False  # family also has always-on shared experts (not routed, not profiled)
    text_config_key: str | None = None  # composite (multimodal) config.json: the key of the text model's config
    serve_shim: str | None = None  # models/<name>.py whose `standardise(loaded)` adapts the MoE blocks for serve

    def num_experts(self, config: Any) -> int:
        """Routed experts per layer, from a transformers config object (aliases resolved)."""
        return int(getattr(config, self.num_experts_key))

    def top_k(self, config: Any) -> int:
        return int(getattr(config, self.top_k_key))

    def router_top_k(self, output: Any, top_k: int) -> Any:
        """The expert ids [tokens, top_k] a router chose, from its forward output (None: not a tuple)."""
        if not isinstance(output, tuple):
            return None
        if self.indices_position is not None:
            return output[self.indices_position]
        return output[self.logits_position].topk(top_k, dim=-1).indices

    def text_config(self, config: ConfigDict) -> ConfigDict:
        """The config dict describing the language model: the text part of a composite config.json
        (a dict without that key, such as the loaded text model's own config, is returned as is)."""
        text = config.get(self.text_config_key) if self.text_config_key else None
        if text is None:
            return config
        if not isinstance(text, dict):
            raise MoelessError(f"model_type {self.model_type!r}: config.json {self.text_config_key!r} is not an object")
        return text

    def expected_moe_layers(self, config: ConfigDict) -> list[int]:
        config = self.text_config(config)
        num_layers = int(config["num_hidden_layers"])
        if self.moe_layers_rule is None:
            return list(range(num_layers))
        return self.moe_layers_rule(config, num_layers)

    def describe(self) -> dict[str, str]:
        notes = f"{self.scoring}; {self.rule_notes}"
        if self.extra_notes:
            notes += f"; {self.extra_notes}"
        return {"model_type": self.model_type, "architecture": self.architecture, "notes": notes}


def _deepseek_layers(config: ConfigDict, num_layers: int) -> list[int]:
    first_dense = int(config.get("first_k_dense_replace") or 0)
    freq = int(config.get("moe_layer_freq") or 1)
    return [i for i in range(num_layers) if i >= first_dense and i % freq == 0]


def _first_dense_layers(config: ConfigDict, num_layers: int) -> list[int]:
    first_dense = int(config.get("first_k_dense_replace") or 0)
    return [i for i in range(num_layers) if i >= first_dense]


def _qwen_layers(config: ConfigDict, num_layers: int) -> list[int]:
    step = int(config.get("decoder_sparse_step") or 1)
    dense = set(config.get("mlp_only_layers") or [])
    return [i for i in range(num_layers) if i not in dense and (i + 1) % step == 0]


def _ernie_layers(config: ConfigDict, num_layers: int) -> list[int]:
    start = int(config.get("moe_layer_start_index") or 0)
    end = config.get("moe_layer_end_index")
    end = num_layers - 1 if end in (None, -1) else int(end)
    interval = int(config.get("moe_layer_interval") or 1)
    return [i for i in range(num_layers) if start <= i <= end and (i + 1) % interval == 0]


def _exaone_layers(config: ConfigDict, num_layers: int) -> list[int]:
    types = config.get("mlp_layer_types") or ["sparse"] * num_layers
    return [i for i, kind in enumerate(types[:num_layers]) if kind == "sparse"]


def _llama4_layers(config: ConfigDict, num_layers: int) -> list[int]:
    listed = config.get("moe_layers")
    if listed is not None:
        return sorted({int(i) for i in listed} & set(range(num_layers)))
    step = int(config.get("interleave_moe_layer_step") or 1)
    return list(range(step - 1, num_layers, step))


def _llama4(model_type: str, text_config_key: str | None) -> FamilyAdapter:
    return FamilyAdapter(
        model_type, "Llama4ForCausalLM", "feed_forward.router", "feed_forward.experts",
        "num_local_experts", "num_experts_per_tok",
        "top-k on logits (top-1 in the released models), sigmoid of the kept logits, no renormalisation; "
        "the score scales the expert's input, not its output",
        _llama4_layers, "MoE at moe_layers, else every interleave_moe_layer_step-th layer",
        "plus a shared expert (not routed); fused transposed expert weights"
        + ("; the text model of Llama4ForConditionalGeneration" if text_config_key else ""),
        indices_position=None, logits_position=1, shared_expert=True, text_config_key=text_config_key,
        serve_shim="llama4")


SOFTMAX_RENORM = "softmax over all experts, top-k, kept weights renormalised to sum 1"
SOFTMAX_TOPK = "softmax over all experts, top-k (renormalised if norm_topk_prob)"

_ADAPTERS = [
    FamilyAdapter("mixtral", "MixtralForCausalLM", "mlp.gate", "mlp.experts",
                  "num_local_experts", "num_experts_per_tok", SOFTMAX_RENORM),
    FamilyAdapter("phimoe", "PhimoeForCausalLM", "mlp.router", "mlp.experts",
                  "num_local_experts", "num_experts_per_tok",
                  "sparsemixer: top-2 chosen one at a time with a jitter-masked softmax"),
    FamilyAdapter("qwen2_moe", "Qwen2MoeForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "num_experts_per_tok", SOFTMAX_TOPK, _qwen_layers,
                  "MoE where (i+1) % decoder_sparse_step == 0 and i not in mlp_only_layers",
                  "plus a gated shared expert (not routed; its shared_expert_gate is not hooked)", shared_expert=True),
    FamilyAdapter("qwen3_moe", "Qwen3MoeForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "num_experts_per_tok", SOFTMAX_TOPK, _qwen_layers,
                  "MoE where (i+1) % decoder_sparse_step == 0 and i not in mlp_only_layers"),
    FamilyAdapter("olmoe", "OlmoeForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "num_experts_per_tok", SOFTMAX_TOPK),
    FamilyAdapter("deepseek_v2", "DeepseekV2ForCausalLM", "mlp.gate", "mlp.experts",
                  "n_routed_experts", "num_experts_per_tok",
                  "softmax, greedy or group-limited top-k (topk_method), weights x routed_scaling_factor",
                  _deepseek_layers, "MoE from first_k_dense_replace on, every moe_layer_freq-th layer",
                  "plus shared experts (not routed)", shared_expert=True),
    FamilyAdapter("deepseek_v3", "DeepseekV3ForCausalLM", "mlp.gate", "mlp.experts",
                  "n_routed_experts", "num_experts_per_tok",
                  "sigmoid + e_score_correction_bias for the choice (group-limited top-k), weights from "
                  "the unbiased sigmoid, renormalised if norm_topk_prob, x routed_scaling_factor",
                  _first_dense_layers, "MoE from first_k_dense_replace on",
                  "plus shared experts (not routed)", shared_expert=True),
    FamilyAdapter("gpt_oss", "GptOssForCausalLM", "mlp.router", "mlp.experts",
                  "num_local_experts", "num_experts_per_tok",
                  "top-k on router logits, softmax over the kept k", extra_notes="experts carry biases"),
    FamilyAdapter("granitemoe", "GraniteMoeForCausalLM", "block_sparse_moe.router", "block_sparse_moe.experts",
                  "num_local_experts", "num_experts_per_tok", "top-k on logits, softmax over the kept k"),
    FamilyAdapter("granitemoeshared", "GraniteMoeSharedForCausalLM", "block_sparse_moe.router",
                  "block_sparse_moe.experts", "num_local_experts", "num_experts_per_tok",
                  "top-k on logits, softmax over the kept k", extra_notes="plus a shared MLP (not routed)",
                  shared_expert=True),
    FamilyAdapter("glm4_moe", "Glm4MoeForCausalLM", "mlp.gate", "mlp.experts",
                  "n_routed_experts", "num_experts_per_tok",
                  "DeepSeek-V3 style: sigmoid + correction bias, group-limited top-k",
                  _first_dense_layers, "MoE from first_k_dense_replace on", "plus shared experts", shared_expert=True),
    FamilyAdapter("dots1", "Dots1ForCausalLM", "mlp.gate", "mlp.experts",
                  "n_routed_experts", "num_experts_per_tok",
                  "DeepSeek-V3 style: sigmoid + correction bias, group-limited top-k",
                  _first_dense_layers, "MoE from first_k_dense_replace on", "plus shared experts", shared_expert=True),
    FamilyAdapter("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", "mlp.gate", "mlp.experts",
                  "moe_num_experts", "moe_k", "softmax + correction bias for the choice, renormalised",
                  _ernie_layers, "MoE from moe_layer_start_index to moe_layer_end_index every moe_layer_interval"),
    FamilyAdapter("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "moe_topk", SOFTMAX_RENORM, extra_notes="plus a shared MLP", shared_expert=True),
    FamilyAdapter("flex_olmo", "FlexOlmoForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "num_experts_per_tok", SOFTMAX_TOPK),
    FamilyAdapter("minimax", "MiniMaxForCausalLM", "mlp.gate", "mlp.experts",
                  "num_local_experts", "num_experts_per_tok", SOFTMAX_RENORM,
                  extra_notes="hybrid lightning/full attention"),
    FamilyAdapter("exaone_moe", "ExaoneMoeForCausalLM", "mlp.gate", "mlp.experts",
                  "num_experts", "num_experts_per_tok",
                  "sigmoid + correction bias, group-limited top-k", _exaone_layers,
                  "MoE where mlp_layer_types[i] == 'sparse'", "plus shared experts", shared_expert=True),
    _llama4("llama4_text", None),
    _llama4("llama4", "text_config"),
]

ADAPTERS: dict[str, FamilyAdapter] = {a.model_type: a for a in _ADAPTERS}


def supported_families() -> list[dict[str, str]]:
    """Every MoE family the loader accepts: model_type, architecture and routing notes."""
    return [a.describe() for a in _ADAPTERS]


def adapter_for(config: ConfigDict, where: str) -> FamilyAdapter:
    """Pick the adapter for a config.json dict, or explain which families are supported."""
    model_type = config.get("model_type")
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    names = ", ".join(sorted(ADAPTERS))
    raise MoelessError(f"{where}: model_type {model_type!r} is not a supported MoE family (supported: {names})")
