"""Model presets: the real sizes of published MoE models (from their Hugging Face config.json files).

Routing for a preset comes from a recorded profile of a smaller model with the same top-k or a
larger one: its layers are mapped onto the preset's cyclically, and when the preset has f times as
many experts, each recorded expert is split into f experts (a token goes to one of them by a fixed
hash), which keeps the recorded skew between groups and spreads it evenly inside a group. A preset
with a smaller top-k keeps each token's highest-weight recorded experts (the recorder stores a
router's top-k in weight order: `torch.topk` sorts): Llama-4-Scout (top-1 of 16) takes each
token's first expert of tiny-mixtral's top-2 of 8, split in two.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeless_cli.errors import require_choice


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    moe_layers: int  # MoE layers (dense layers are in dense_layers)
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts per token
    hidden: int  # model width
    expert_intermediate: int  # FFN width of one routed expert (gate, up, down projections)
    bytes_per_param: float  # 2 for bf16, 1 for fp8 weights
    attention_params: float  # attention parameters of one layer
    shared_expert_params: float = 0.0  # always-on shared experts of one MoE layer
    dense_layers: int = 0  # leading dense-FFN layers (DeepSeek-V3: 3)
    dense_ffn_params: float = 0.0  # FFN parameters of one dense layer
    other_params: float = 0.0  # embeddings and LM head
    kv_bytes_per_token: float = 0.0  # KV-cache bytes per token per layer
    routing_model: str = ""  # built-in model whose recorded routing feeds the preset by default
    default_hardware: str = "a6000"  # the GPU bench simulates when none is named (one the model fits on 8 of)

    @property
    def expert_params(self) -> float:
        return 3.0 * self.hidden * self.expert_intermediate

    @property
    def expert_bytes(self) -> float:
        return self.expert_params * self.bytes_per_param

    @property
    def expert_flops_per_token(self) -> float:
        return 2.0 * self.expert_params

    @property
    def total_layers(self) -> int:
        return self.moe_layers + self.dense_layers

    def as_dict(self) -> dict:
        return {
            "name": self.name, "moe_layers": self.moe_layers, "num_experts": self.num_experts,
            "top_k": self.top_k, "hidden": self.hidden, "expert_intermediate": self.expert_intermediate,
            "expert_mb": round(self.expert_bytes / 1e6, 2),
        }


def _gqa(hidden: int, heads: int, kv_heads: int, head_dim: int) -> float:
    return hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden


PRESETS: dict[str, ModelPreset] = {
    "mixtral-8x7b": ModelPreset(
        "mixtral-8x7b", "Mixtral-8x7B: 32 layers, 8 experts top-2, hidden 4096, expert FFN 14336 (bf16)",
        32, 8, 2, 4096, 14336, 2.0, _gqa(4096, 32, 8, 128),
        other_params=2 * 32000 * 4096, kv_bytes_per_token=2 * 8 * 128 * 2, routing_model="tiny-mixtral"),
    "phi-3.5-moe": ModelPreset(
        "phi-3.5-moe", "Phi-3.5-MoE: 32 layers, 16 experts top-2, hidden 4096, expert FFN 6400 (bf16)",
        32, 16, 2, 4096, 6400, 2.0, _gqa(4096, 32, 8, 128),
        other_params=2 * 32064 * 4096, kv_bytes_per_token=2 * 8 * 128 * 2, routing_model="tiny-mixtral"),
    "olmoe-1b-7b": ModelPreset(
        "olmoe-1b-7b", "OLMoE-1B-7B: 16 layers, 64 experts top-8, hidden 2048, expert FFN 1024 (bf16)",
        16, 64, 8, 2048, 1024, 2.0, _gqa(2048, 16, 16, 128),
        other_params=2 * 50304 * 2048, kv_bytes_per_token=2 * 16 * 128 * 2, routing_model="tiny-olmoe"),
    "qwen3-30b-a3b": ModelPreset(
        "qwen3-30b-a3b", "Qwen3-30B-A3B: 48 layers, 128 experts top-8, hidden 2048, expert FFN 768 (bf16)",
        48, 128, 8, 2048, 768, 2.0, _gqa(2048, 32, 4, 128),
        other_params=2 * 151936 * 2048, kv_bytes_per_token=2 * 4 * 128 * 2, routing_model="tiny-olmoe"),
    # Llama-4-Scout-17B-16E (text_config of its config.json): 48 layers, all MoE (interleave_moe_layer_step
    # 1), 16 routed experts top-1 plus one shared expert of the same width (intermediate_size 8192;
    # intermediate_size_mlp 16384 is the dense FFN, unused when every layer is MoE), hidden 5120, 40 heads,
    # 8 KV heads of 128, vocab 202048, untied embeddings, bf16. Its 109B bf16 parameters do not fit on
    # 8 A6000s (one expert slot per GPU, 16 experts), so it runs on H100s by default.
    "llama-4-scout": ModelPreset(
        "llama-4-scout", "Llama-4-Scout-17B-16E: 48 layers, 16 experts top-1 + 1 shared, hidden 5120, "
        "expert FFN 8192 (bf16)",
        48, 16, 1, 5120, 8192, 2.0, _gqa(5120, 40, 8, 128), shared_expert_params=3 * 5120 * 8192,
        other_params=2 * 202048 * 5120, kv_bytes_per_token=2 * 8 * 128 * 2, routing_model="tiny-mixtral",
        default_hardware="h100"),
    # MLA attention: q_a 7168x1536, q_b 1536x(128x192), kv_a 7168x576, kv_b 512x(128x256), o (128x128)x7168.
    "deepseek-v3": ModelPreset(
        "deepseek-v3", "DeepSeek-V3: 58 MoE + 3 dense layers, 256 experts top-8 + 1 shared, hidden 7168, "
        "expert FFN 2048 (fp8)",
        58, 256, 8, 7168, 2048, 1.0,
        7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168,
        shared_expert_params=3 * 7168 * 2048, dense_layers=3, dense_ffn_params=3 * 7168 * 18432,
        other_params=2 * 129280 * 7168, kv_bytes_per_token=(512 + 64) * 2, routing_model="tiny-olmoe",
        default_hardware="h200"),
}


def get_preset(name: str) -> ModelPreset:
    require_choice("model preset", name, PRESETS)
    return PRESETS[name]


def preset_from_profile(name: str, num_layers: int, num_experts: int, top_k: int, hidden: int,
                        intermediate: int) -> ModelPreset:
    """A preset with the profiled model's own sizes (bench on the model itself)."""
    return ModelPreset(name, f"{name} (its own sizes)", num_layers, num_experts, top_k, hidden, intermediate, 4.0,
                       _gqa(hidden, 4, 4, max(1, hidden // 4)), kv_bytes_per_token=2 * hidden * 4)
