"""The built-in models shipped in the package: they load with plain transformers, their metadata
matches their config, they generate, they stay within the size budget, and `moeless models` lists
them with the supported families. Nothing here trains or downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import moeless_cli

BUILTIN_DIR = Path(moeless_cli.__file__).resolve().parent / "models" / "builtin"
NAMES = ("tiny-mixtral", "tiny-olmoe")
SIZE_BUDGET_BYTES = 40 * 1000 * 1000  # all built-in models together
EXPECTED_SHAPE = {"tiny-mixtral": ("MixtralForCausalLM", 8, 2), "tiny-olmoe": ("OlmoeForCausalLM", 64, 8)}


def _meta(name: str) -> dict:
    return json.loads((BUILTIN_DIR / name / "moeless-builtin.json").read_text())


@pytest.fixture(scope="module", params=NAMES)
def shipped(request):
    """(name, model in fp32, tokenizer), loaded by transformers straight from the package dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = BUILTIN_DIR / request.param
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return request.param, model, tokenizer


def test_metadata_matches_config(shipped):
    name, model, tokenizer = shipped
    meta, config = _meta(name), model.config
    architecture, experts, top_k = EXPECTED_SHAPE[name]
    assert config.architectures == [architecture] == [meta["architecture"]]
    num_experts = getattr(config, "num_local_experts", None) or config.num_experts
    assert (num_experts, config.num_experts_per_tok) == (experts, top_k) == (meta["experts"], meta["top_k"])
    assert config.num_hidden_layers == meta["layers"] >= 6
    assert config.hidden_size == meta["hidden_size"]
    assert config.vocab_size == meta["vocab_size"] == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) == meta["params"]
    assert meta["name"] == name and meta["trained_steps"] > 0 and meta["seed"] == 1234
    assert set(meta["domains"]) == {"prose", "code", "math", "chat"}


def test_weights_are_half_precision_safetensors_and_no_batched_mm(shipped):
    name, model, _ = shipped
    config = json.loads((BUILTIN_DIR / name / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) in ("bfloat16", "float16")
    assert (BUILTIN_DIR / name / "model.safetensors").is_file()
    assert "batched_mm" not in json.dumps(config)
    assert model.config._experts_implementation != "batched_mm"
    assert next(model.parameters()).dtype.is_floating_point


def test_special_tokens_inside_vocab(shipped):
    _, model, tokenizer = shipped
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert None not in ids and len(ids) == 3
    assert max(ids) < model.config.vocab_size
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer("x = 1")["input_ids"][0] == tokenizer.bos_token_id


def test_generates_a_few_tokens(shipped):
    import torch

    _, model, tokenizer = shipped
    inputs = tokenizer(["def add(a, b):\n", "Question: Tom has 3 apples."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 6)
    assert all(isinstance(tokenizer.decode(row), str) for row in out)


def test_trained_models_beat_the_unigram_baseline():
    for name in NAMES:
        meta = _meta(name)
        for domain in meta["domains"]:
            assert meta["heldout_ppl"][domain] < 0.8 * meta["unigram_ppl"][domain], (name, domain)


def test_size_budget_and_recorded_bytes():
    total = sum(f.stat().st_size for f in BUILTIN_DIR.rglob("*") if f.is_file())
    assert total <= SIZE_BUDGET_BYTES
    for name in NAMES:
        files = [f for f in (BUILTIN_DIR / name).iterdir() if f.is_file() and f.name != "moeless-builtin.json"]
        assert sum(f.stat().st_size for f in files) == _meta(name)["bytes"]


def test_models_json_lists_builtins_and_families(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {row["name"]: row for row in doc["builtin"]}
    assert set(NAMES) <= set(rows)
    for name in NAMES:
        assert rows[name]["experts"] == EXPECTED_SHAPE[name][1]
        assert rows[name]["bytes_on_disk"] > rows[name]["params"]  # >= 2 bytes per weight, plus tokenizer
        assert Path(rows[name]["path"]).is_dir()
    families = {f["model_type"] for f in doc["families"]}
    assert {"mixtral", "olmoe"} <= families


def test_models_table_mentions_each_model(cli):
    result = cli("models")
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.stdout
