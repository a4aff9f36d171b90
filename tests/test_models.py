"""Model loading: every supported family from a saved tiny checkpoint, built-in names, bad input."""

from __future__ import annotations

import json

import pytest
from tiny_models import FAMILIES, cached_tiny_checkpoint, make_tiny_dense_checkpoint, single_thread_torch, tiny_top_k

from moeless_cli.errors import MoelessError
from moeless_cli.models import ADAPTERS, config_hash, load_moe_model, resolve_model_path, supported_families


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


def test_every_supported_family_has_a_tiny_checkpoint():
    assert sorted(ADAPTERS) == FAMILIES
    listed = {f["model_type"] for f in supported_families()}
    assert {"mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss",
            "llama4_text", "llama4"} <= listed
    assert all(f["architecture"].endswith("ForCausalLM") and f["notes"] for f in supported_families())


@pytest.mark.parametrize("family", FAMILIES)
def test_load_every_family_from_disk(family):
    path = cached_tiny_checkpoint(family)
    loaded = load_moe_model(path)
    config = loaded.model.config
    assert loaded.family == family
    assert loaded.num_experts == 8 and loaded.top_k == tiny_top_k(family) and loaded.hidden_size == 32
    # The MoE layers found by module structure agree with the family's config rule.
    assert loaded.moe_layer_ids == loaded.adapter.expected_moe_layers(config.to_dict())
    assert loaded.num_moe_layers == len(loaded.moe_layer_ids) >= 2
    assert loaded.expert_bytes > 0
    assert loaded.experts(0).gate_up_proj.shape[0] == loaded.num_experts  # fused 3-D weights
    assert loaded.tokenizer is not None and loaded.tokenizer.padding_side == "left"
    assert loaded.config_hash == config_hash(json.loads((path / "config.json").read_text()))
    on_disk = json.loads((path / "config.json").read_text())  # composite configs nest the text model
    assert loaded.adapter.expected_moe_layers(on_disk) == loaded.moe_layer_ids


def test_deepseek_dense_layers_follow_first_k_dense_replace(tmp_path):
    from tiny_models import make_tiny_checkpoint

    path = make_tiny_checkpoint("deepseek_v3", tmp_path / "ds", num_hidden_layers=4, first_k_dense_replace=2)
    loaded = load_moe_model(path)
    assert loaded.moe_layer_ids == [2, 3]


def test_expert_bytes_counts_one_expert():
    loaded = load_moe_model(cached_tiny_checkpoint("mixtral"))
    # gate_up [2*64, 32] + down [32, 64] per expert, saved in fp32
    assert loaded.expert_params == 2 * 64 * 32 + 32 * 64
    assert loaded.expert_bytes == loaded.expert_params * 4
    # Loaded in bf16, the checkpoint still stores fp32: expert_bytes describes the checkpoint.
    import torch

    assert load_moe_model(cached_tiny_checkpoint("mixtral"), dtype=torch.bfloat16).expert_bytes == loaded.expert_bytes


def test_config_hash_ignores_volatile_keys():
    base = {"model_type": "mixtral", "hidden_size": 32}
    assert config_hash(base) == config_hash({**base, "transformers_version": "9.9", "_name_or_path": "x"})
    assert config_hash(base) != config_hash({**base, "hidden_size": 64})


def test_non_moe_checkpoint_lists_supported_families(tmp_path):
    path = make_tiny_dense_checkpoint(tmp_path / "llama")
    with pytest.raises(MoelessError, match="not a supported MoE family.*mixtral"):
        load_moe_model(path)


def test_unknown_path_and_unshipped_builtin(tmp_path):
    with pytest.raises(MoelessError, match="model not found"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(MoelessError, match="no config.json"):
        resolve_model_path(tmp_path)
    with pytest.raises(MoelessError, match="tiny-nonexistent"):
        resolve_model_path("tiny-nonexistent")


def test_corrupt_weights_are_a_one_line_error(tmp_path):
    import shutil

    path = tmp_path / "broken"
    shutil.copytree(cached_tiny_checkpoint("olmoe"), path)
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MoelessError, match="cannot load checkpoint"):
        load_moe_model(path)
