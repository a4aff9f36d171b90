"""MoE checkpoints: family adapters, built-in names, and loading (torch is imported lazily)."""

from moeless_cli.models.families import ADAPTERS, FamilyAdapter, supported_families
from moeless_cli.models.loading import (
    LoadedModel,
    builtin_names,
    config_hash,
    load_moe_model,
    resolve_model_path,
)

__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "LoadedModel",
    "builtin_names",
    "config_hash",
    "load_moe_model",
    "resolve_model_path",
    "supported_families",
]
