"""`moeless profile`: every family end to end from disk, recorded routing checked against the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import FAMILIES, cached_tiny_checkpoint, single_thread_torch, tiny_top_k

from moeless_cli.models import builtin_names
from moeless_cli.profiling import load_profile

SMALL = ("--num-prompts", "4", "--batch-size", "2", "--max-new-tokens", "2", "--max-prompt-tokens", "24",
         "--router-samples", "20")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


def _run(cli, *args):
    result = cli("profile", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _check_consistent(profile):
    """Invariants tying the arrays together."""
    tokens, layers, k = profile.topk_ids.shape
    assert profile.load.shape == (profile.num_iterations, layers, profile.num_experts)
    assert profile.load.sum() == tokens * layers * k
    assert profile.iteration_tokens.sum() == tokens
    # Each iteration's load is exactly the bincount of its tokens' top-k ids, per layer.
    for it in range(profile.num_iterations):
        ids = profile.topk_ids[profile.token_iteration == it]  # [n, layers, k]
        for layer in range(layers):
            counts = np.bincount(ids[:, layer].ravel(), minlength=profile.num_experts)
            assert np.array_equal(counts, profile.load[it, layer])
    assert np.array_equal(profile.token_phase, profile.iteration_phase[profile.token_iteration])
    assert profile.iteration_phase[0] == 0 and set(np.unique(profile.iteration_phase)) <= {0, 1}


@pytest.mark.parametrize("family", FAMILIES)
def test_profile_every_family_from_disk(cli, tmp_path, family):
    out = tmp_path / "prof"
    doc = _run(cli, "--model", cached_tiny_checkpoint(family), *SMALL, "--out", out)
    assert {"out", "layers", "experts", "top_k", "iterations", "tokens"} <= set(doc)
    assert doc["out"] == str(out) and doc["experts"] == 8 and doc["top_k"] == tiny_top_k(family)
    profile = load_profile(out)
    assert profile.num_layers == doc["layers"] and profile.num_iterations == doc["iterations"]
    assert profile.num_tokens == doc["tokens"] > 0
    assert profile.manifest["model"]["family"] == family and len(profile.config_hash) == 16
    assert profile.router_inputs.shape == (20, profile.num_layers, 32)
    assert profile.router_inputs.dtype == np.float16 and profile.topk_ids.dtype == np.uint8
    assert np.all(np.diff(profile.router_input_tokens) > 0)
    assert profile.timings["forward_seconds_total"] > 0 and profile.iteration_seconds.shape == (doc["iterations"],)
    _check_consistent(profile)


def test_recorded_routing_matches_the_model_without_cache_or_padding(cli, tmp_path):
    """Batch size 3 (left padding, KV cache, decode) records the same top-k ids as one uncached,
    unpadded forward over each request's full token sequence, read from output_router_logits."""
    import torch

    from moeless_cli.models import load_moe_model

    path = cached_tiny_checkpoint("mixtral")
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("hi", "two plus two is", "a longer prompt, padded less")))
    out = tmp_path / "p"
    _run(cli, "--model", path, "--dataset", data, "--num-prompts", "3", "--batch-size", "3",
         "--max-new-tokens", "4", "--out", out)
    profile = load_profile(out)
    assert len(set(profile.request_prompt_tokens.tolist())) > 1, "want prompts of different lengths (padding)"
    model = load_moe_model(path).model
    for request in range(3):
        rows = profile.token_request == request
        order = np.argsort(profile.token_position[rows], kind="stable")
        ids = torch.tensor(profile.token_ids[rows][order])[None]  # [1, seq]
        with torch.no_grad():
            logits = model(input_ids=ids, output_router_logits=True).router_logits  # per layer [seq, experts]
        for layer, layer_logits in enumerate(logits):
            expected = torch.topk(layer_logits.softmax(-1), 2, dim=-1).indices.sort(-1).values.numpy()
            recorded = np.sort(profile.topk_ids[rows][order][:, layer], axis=-1)
            assert np.array_equal(recorded, expected), f"request {request} layer {layer}"


def test_router_inputs_are_the_routers_inputs(cli, tmp_path):
    import torch

    from moeless_cli.models import load_moe_model

    path = cached_tiny_checkpoint("qwen3_moe")
    out = tmp_path / "p"
    _run(cli, "--model", path, *SMALL, "--out", out)
    profile = load_profile(out)
    loaded = load_moe_model(path)
    agree = total = 0
    for layer in range(profile.num_layers):
        weight = loaded.router(layer).weight.detach()  # [experts, hidden]
        logits = profile.router_inputs[:, layer].astype(np.float32) @ weight.numpy().T  # [samples, experts]
        chosen = np.sort(torch.topk(torch.tensor(logits), 2).indices.numpy(), axis=-1)
        recorded = np.sort(profile.topk_ids[profile.router_input_tokens, layer], axis=-1)
        agree += int((chosen == recorded).all(axis=-1).sum())
        total += len(chosen)
    assert agree / total >= 0.95  # fp16 storage may flip a near tie


def test_reservoir_is_bounded_and_zero_disables_it(cli, tmp_path):
    path = cached_tiny_checkpoint("olmoe")
    doc = _run(cli, "--model", path, *SMALL[:-2], "--router-samples", "7", "--out", tmp_path / "a")
    profile = load_profile(tmp_path / "a")
    assert profile.router_inputs.shape[0] == 7 == doc["router_samples"] < profile.num_tokens
    assert len(np.unique(profile.router_input_tokens)) == 7
    _run(cli, "--model", path, *SMALL[:-2], "--router-samples", "0", "--out", tmp_path / "b")
    profile = load_profile(tmp_path / "b")
    assert profile.router_inputs is None and not profile.manifest["present"]["router_inputs"]
    assert not (tmp_path / "b" / "router_inputs.safetensors").exists()


def test_default_out_dir_and_human_summary(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("profile", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", "gsm8k", *SMALL)
    assert result.exit_code == 0, result.output
    profile = load_profile(tmp_path / "profiles" / "mixtral-0-gsm8k")
    assert profile.domains == ["math"] and profile.manifest["dataset"]["name"] == "gsm8k"
    assert "hottest" in result.stdout


@pytest.mark.skipif("tiny-mixtral" not in builtin_names(), reason="built-in tiny-mixtral not shipped in this checkout yet")
def test_default_model_is_the_builtin_tiny_mixtral(cli, tmp_path):
    doc = _run(cli, *SMALL, "--out", tmp_path / "p")
    profile = load_profile(tmp_path / "p")
    assert profile.model_id == "tiny-mixtral" and doc["model"] == "tiny-mixtral"
    assert profile.domains == ["code", "math", "prose"]  # the default `mix` dataset
    _check_consistent(profile)


def test_requests_stop_at_eos_and_prefill_only_runs(cli, tmp_path):
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.profiling.recorder import RoutingRecorder
    from moeless_cli.profiling.runner import ProfileOptions, generate, tokenize_batches
    from moeless_cli.workloads.prompts import load_prompts

    loaded = load_moe_model(cached_tiny_checkpoint("olmoe"))
    batches = tokenize_batches(loaded, load_prompts("gsm8k", num_prompts=4), ProfileOptions(batch_size=2, max_prompt_tokens=16))
    with torch.no_grad():
        loaded.model.lm_head.weight.zero_()  # every logit 0: greedy picks id 0 ...
    loaded.tokenizer.eos_token_id = 0  # ... which is now EOS, so every request stops after prefill
    with RoutingRecorder(loaded, router_samples=0) as recorder:
        trace = generate(loaded, batches, max_new_tokens=5, recorder=recorder)
    assert trace.iteration_phase == [0, 0] and recorder.load().shape[0] == 2

    doc = _run(cli, "--model", cached_tiny_checkpoint("olmoe"), *SMALL[:4], "--max-new-tokens", "0",
               "--out", tmp_path / "p")
    profile = load_profile(tmp_path / "p")
    assert doc["iterations"] == 2 and not profile.token_phase.any()


def test_many_experts_use_int16_ids(cli, tmp_path):
    from tiny_models import make_tiny_checkpoint

    path = make_tiny_checkpoint("olmoe", tmp_path / "wide", num_experts=300, num_experts_per_tok=4,
                                intermediate_size=8, num_hidden_layers=2)
    doc = _run(cli, "--model", path, *SMALL, "--out", tmp_path / "p")
    profile = load_profile(tmp_path / "p")
    assert doc["experts"] == 300 and profile.topk_ids.dtype == np.int16 and profile.topk_ids.shape[2] == 4
    _check_consistent(profile)
