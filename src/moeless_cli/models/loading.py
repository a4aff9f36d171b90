"""Load a local Hugging Face MoE checkpoint (offline) and describe its MoE structure."""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import read_json
from moeless_cli.models.families import ADAPTERS, FamilyAdapter, adapter_for

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_METADATA = "moeless-builtin.json"
# Keys that change with the saving library, not with the model.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype")


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode, on `device`
    tokenizer: Any  # PreTrainedTokenizer or None when the checkpoint ships none
    adapter: FamilyAdapter  # where routers/experts live for this family
    model_id: str  # built-in name, or the checkpoint directory's name
    path: Path  # the checkpoint directory
    config_hash: str  # short sha256 of config.json without volatile keys
    num_moe_layers: int  # how many decoder layers have a router
    moe_layer_ids: list[int]  # decoder-layer index of each MoE layer, ascending
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts chosen per token
    hidden_size: int  # width of each router's input
    expert_bytes: int  # bytes of one expert's weights (one layer) in the checkpoint's dtype
    expert_params: int  # parameters of one expert (one layer)
    builtin_metadata: dict[str, Any] | None = None  # moeless-builtin.json of a shipped model, else None

    @property
    def family(self) -> str:
        return self.adapter.model_type

    def decoder_layer(self, moe_index: int) -> Any:
        """The decoder layer holding the `moe_index`-th MoE layer (not the decoder-layer index)."""
        return _decoder_layers(self.model)[self.moe_layer_ids[moe_index]]

    def router(self, moe_index: int) -> Any:
        """The router module of the `moe_index`-th MoE layer."""
        return self.decoder_layer(moe_index).get_submodule(self.adapter.router_path)

    def experts(self, moe_index: int) -> Any:
        return self.decoder_layer(moe_index).get_submodule(self.adapter.experts_path)

    def standardise_moe_blocks(self) -> Callable[[], None]:
        """Make every MoE block call its experts as `experts(hidden [T, H], top_k_index [T, k],
        top_k_weights [T, k])`, the call serve's expert-parallel module takes (already so for every
        family but Llama-4: see the adapter's serve_shim). Returns the undo."""
        if self.adapter.serve_shim is None:
            return lambda: None
        return importlib.import_module(f"moeless_cli.models.{self.adapter.serve_shim}").standardise(self)


def builtin_names() -> list[str]:
    """Built-in checkpoints shipped in the package (folders with a config.json)."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A built-in name -> its shipped folder; otherwise an existing checkpoint directory."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise MoelessError(f"model directory {candidate} has no config.json (not a Hugging Face checkpoint)")
        return candidate
    looks_like_name = os.sep not in text and not text.startswith(".")
    if looks_like_name and (BUILTIN_DIR / text / "config.json").is_file():
        return BUILTIN_DIR / text
    if looks_like_name and text.startswith("tiny-"):
        shipped = ", ".join(builtin_names()) or "none yet"
        raise MoelessError(f"built-in model {text!r} is not shipped in this install (built-in models: {shipped})")
    shipped = ", ".join(builtin_names()) or "none shipped yet"
    raise MoelessError(f"model not found: {text} (give a local checkpoint directory or a built-in name: {shipped})")


def config_hash(config: dict[str, Any]) -> str:
    """Short, stable sha256 of a config dict (sorted keys; volatile keys dropped)."""
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:16]


def read_model_config(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json", what="model config")
    if not isinstance(config, dict):
        raise MoelessError(f"{path / 'config.json'} is not a JSON object")
    return config


def read_text_config(path: Path) -> dict[str, Any]:
    """config.json of the language model: the text part of a composite (multimodal) config."""
    config = read_model_config(path)
    adapter = ADAPTERS.get(config.get("model_type"))  # type: ignore[arg-type]
    return adapter.text_config(config) if adapter is not None else config


def _decoder_layers(model: Any) -> Any:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise MoelessError(f"{type(model).__name__} has no model.layers: cannot find its decoder layers")
    return layers


def _find_moe_layers(model: Any, adapter: FamilyAdapter) -> list[int]:
    found = []
    for i, layer in enumerate(_decoder_layers(model)):
        try:
            layer.get_submodule(adapter.router_path)
        except AttributeError:
            continue
        found.append(i)
    return found


def _expert_params(experts: Any, num_experts: int) -> int:
    """Parameters of one expert: fused parameters have a leading [num_experts] dimension."""
    total = 0
    for param in experts.parameters(recurse=True):
        if param.dim() >= 1 and param.shape[0] == num_experts:
            total += param.numel() // num_experts
    return int(total)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _checkpoint_dtype_bytes(config: dict[str, Any], loaded_bytes: int) -> int:
    """Bytes per weight as stored in the checkpoint (what a server loads), else as loaded here."""
    dtype = config.get("dtype") or config.get("torch_dtype")
    return _DTYPE_BYTES.get(str(dtype).replace("torch.", ""), loaded_bytes)


def _torch_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise MoelessError(f"unknown dtype {dtype!r} (use one of: auto, {', '.join(names)})")
        return names[dtype]
    return dtype


def load_moe_model(name_or_path: str | os.PathLike[str], device: str = "cpu", dtype: Any = None) -> LoadedModel:
    """Load a built-in or local MoE checkpoint with transformers, offline, in eval mode.

    dtype: None -> float32 on CPU, the checkpoint's own dtype elsewhere; or a torch dtype / name.
    """
    path = resolve_model_path(name_or_path)
    config = read_model_config(path)
    adapter = adapter_for(config, where=str(path))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_torch_dtype(dtype, device), local_files_only=True
        )
    except MoelessError:
        raise
    except Exception as exc:  # transformers raises many types for unreadable checkpoints
        message = " ".join(str(exc).split())[:300]
        raise MoelessError(f"cannot load checkpoint {path}: {type(exc).__name__}: {message}") from None
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise MoelessError(f"cannot move the model to device {device!r}: {exc}") from None
    model.eval()
    tokenizer = _load_tokenizer(path, AutoTokenizer)

    moe_layer_ids = _find_moe_layers(model, adapter)
    if not moe_layer_ids:
        raise MoelessError(f"{path}: no MoE layers found (no {adapter.router_path} in any decoder layer)")
    num_experts = adapter.num_experts(model.config)  # config.json may omit defaults or use aliases
    text_config = adapter.text_config(config)
    experts = _decoder_layers(model)[moe_layer_ids[0]].get_submodule(adapter.experts_path)
    expert_params = _expert_params(experts, num_experts)
    name = str(name_or_path)
    model_id = name if path.parent == BUILTIN_DIR else path.resolve().name
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=model_id,
        path=path,
        config_hash=config_hash(config),
        num_moe_layers=len(moe_layer_ids),
        moe_layer_ids=moe_layer_ids,
        num_experts=num_experts,
        top_k=adapter.top_k(model.config),
        hidden_size=int(model.config.hidden_size),
        expert_bytes=expert_params * _checkpoint_dtype_bytes({**config, **text_config},
                                                             next(experts.parameters()).element_size()),
        expert_params=expert_params,
        builtin_metadata=read_json(path / BUILTIN_METADATA, what="built-in model metadata")
        if (path / BUILTIN_METADATA).is_file() else None,
    )


def _load_tokenizer(path: Path, auto_tokenizer: Any) -> Any:
    has_files = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if not has_files:
        return None
    try:
        tokenizer = auto_tokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a broken tokenizer should say so, not crash
        raise MoelessError(f"cannot load the tokenizer in {path}: {type(exc).__name__}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
