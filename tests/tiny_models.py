"""Tiny random checkpoints of every supported MoE family, saved the way real ones are.

`make_tiny_checkpoint(family, path)` writes config.json, model.safetensors and a byte-level
tokenizer (with a chat template) into `path`, so tests exercise the real `from_pretrained` path.
Other test modules (serve, predictor) reuse it; nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 320  # 3 specials + 256 byte tokens fit, with room to spare
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_COMMON: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=512,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    tie_word_embeddings=False,
)
# Llama-4 as released (Scout/Maverick): top-1 sigmoid router, a shared expert, dense layers between MoE
# ones (Maverick: interleave_moe_layer_step 2), chunked attention in the RoPE layers.
_LLAMA4_TEXT = dict(num_local_experts=8, num_experts_per_tok=1, intermediate_size_mlp=64, head_dim=8,
                    num_hidden_layers=4, interleave_moe_layer_step=2, attention_chunk_size=16)
_LLAMA4_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      image_size=28, patch_size=14, vision_output_dim=32, projector_input_dim=32,
                      projector_output_dim=32)
_DEEPSEEK_ATTENTION = dict(
    num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8
)

# Per family: the keys that differ (expert count, top-k, which layers are dense, shared experts).
FAMILY_OVERRIDES: dict[str, dict[str, Any]] = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "deepseek_v2": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                        n_shared_experts=1, q_lora_rank=None, n_group=1, topk_group=1, **_DEEPSEEK_ATTENTION),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                        n_shared_experts=1, q_lora_rank=16, n_group=2, topk_group=1, **_DEEPSEEK_ATTENTION),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, sliding_window=16),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "granitemoeshared": dict(num_local_experts=8, num_experts_per_tok=2, shared_intermediate_size=32),
    "glm4_moe": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                     n_shared_experts=1, n_group=1, topk_group=1, head_dim=8),
    "dots1": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                  n_shared_experts=1, n_group=1, topk_group=1, head_dim=8),
    "ernie4_5_moe": dict(moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=0,
                         moe_layer_start_index=1),
    "hunyuan_v1_moe": dict(num_experts=8, moe_topk=2, head_dim=8),
    "flex_olmo": dict(num_experts=8, num_experts_per_tok=2),
    "minimax": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8),
    "exaone_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8,
                       mlp_layer_types=["dense", "sparse", "sparse"]),
    "llama4_text": _LLAMA4_TEXT,
    # Llama4ForConditionalGeneration's checkpoint (text + vision); moeless loads its text model
    "llama4": dict(text_config=_LLAMA4_TEXT, vision_config=_LLAMA4_VISION),
}
FAMILIES = sorted(FAMILY_OVERRIDES)
COMPOSITE = {"llama4"}  # config.json nests the language model under text_config


def tiny_top_k(family: str) -> int:
    """Experts per token of a family's tiny checkpoint (Llama-4: 1, as released; the others: 2)."""
    return 1 if family.startswith("llama4") else 2


def _tiny_config(family: str, overrides: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    if family in COMPOSITE:
        fields = FAMILY_OVERRIDES[family]
        text = {**_COMMON, **fields["text_config"], **overrides}
        return AutoConfig.for_model(family, text_config=text, vision_config=fields["vision_config"],
                                    tie_word_embeddings=False)
    return AutoConfig.for_model(family, **{**_COMMON, **FAMILY_OVERRIDES[family], **overrides})


def make_tiny_tokenizer() -> Any:
    """A byte-level tokenizer (every UTF-8 string encodes) with pad/bos/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    for char in sorted(byte_chars):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_checkpoint(family: str, path: str | Path, seed: int = 0, with_tokenizer: bool = True,
                         **overrides: Any) -> Path:
    """Save a random tiny `family` model (plus tokenizer) to `path`; returns `path`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if family not in FAMILY_OVERRIDES:
        raise KeyError(f"no tiny config for {family!r}; known: {', '.join(FAMILIES)}")
    path = Path(path)
    config = _tiny_config(family, overrides)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if family in COMPOSITE else AutoModelForCausalLM
    model = auto.from_config(config)
    model.save_pretrained(path)
    if with_tokenizer:
        make_tiny_tokenizer().save_pretrained(path)
    return path


def make_tiny_dense_checkpoint(path: str | Path) -> Path:
    """A non-MoE (Llama) checkpoint, for the 'not an MoE model' error path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
    config = AutoConfig.for_model("llama", **{k: _COMMON[k] for k in keys})
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


_CACHE: dict[tuple[str, int], Path] = {}
_CACHE_DIR: Path | None = None


def cached_tiny_checkpoint(family: str, seed: int = 0) -> Path:
    """`make_tiny_checkpoint` once per (family, seed) per test process, in a temp dir removed at exit.

    Do not modify the returned directory; copy it first (shared by every test that asks).
    """
    global _CACHE_DIR
    if (family, seed) not in _CACHE:
        if _CACHE_DIR is None:
            import atexit
            import shutil
            import tempfile

            _CACHE_DIR = Path(tempfile.mkdtemp(prefix="moeless-tiny-models-"))
            atexit.register(shutil.rmtree, _CACHE_DIR, True)
        _CACHE[(family, seed)] = make_tiny_checkpoint(family, _CACHE_DIR / f"{family}-{seed}", seed=seed)
    return _CACHE[(family, seed)]


def single_thread_torch():
    """Context manager: torch on one thread (tiny models on a busy 2-core box run ~100x faster)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return scope()


def plain_greedy_outputs(model_dir: str | Path, small_args: tuple[str, ...]) -> dict[str, list[int]]:
    """What plain transformers (its own loader, fp32, CPU) generates greedily for the prompts and
    output lengths `moeless serve --model model_dir *small_args` serves; request id -> new token ids.

    small_args: ("--max-requests", N, "--max-output-tokens", N, "--max-prompt-tokens", N, "--time-scale", X).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moeless_cli.serving.reference import reference_outputs
    from moeless_cli.serving.setup import ServeOptions, build_workload

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    flags = dict(zip(small_args[::2], small_args[1::2]))
    options = ServeOptions(model=str(model_dir), max_requests=int(flags["--max-requests"]),
                           max_output_tokens=int(flags["--max-output-tokens"]),
                           max_prompt_tokens=int(flags["--max-prompt-tokens"]), time_scale=float(flags["--time-scale"]))
    with single_thread_torch():
        return reference_outputs(model, build_workload(options, tokenizer))
