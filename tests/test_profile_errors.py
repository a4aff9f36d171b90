"""Bad input to `moeless profile` and `load_profile`: one-line errors, non-zero exit, no partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import cached_tiny_checkpoint, make_tiny_dense_checkpoint, single_thread_torch

from moeless_cli.errors import MoelessError
from moeless_cli.profiling import load_profile, save_profile

SMALL = ("--num-prompts", "2", "--batch-size", "2", "--max-new-tokens", "1", "--max-prompt-tokens", "16")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


def _fails(cli, *args, match):
    result = cli("profile", *args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert result.stdout == ""
    return lines[0]


def test_unknown_model_path(cli, tmp_path):
    _fails(cli, "--model", tmp_path / "missing", "--out", tmp_path / "o", "--json", match="model not found")
    assert not (tmp_path / "o").exists()


def test_non_moe_model(cli, tmp_path):
    dense = make_tiny_dense_checkpoint(tmp_path / "llama")
    line = _fails(cli, "--model", dense, *SMALL, "--out", tmp_path / "o", match="not a supported MoE family")
    assert "mixtral" in line and "deepseek_v3" in line
    assert not (tmp_path / "o").exists()


def test_dataset_without_text_field(cli, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"body": "hello"}\n')
    model = cached_tiny_checkpoint("mixtral")
    _fails(cli, "--model", model, "--dataset", data, "--out", tmp_path / "o", match="available fields: body")
    _fails(cli, "--model", model, "--dataset", data, "--text-field", "title", "--out", tmp_path / "o", match="title")
    assert not (tmp_path / "o").exists()


def test_empty_dataset(cli, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), "--dataset", data, "--out", tmp_path / "o", match="empty")
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_lists_builtins(cli, tmp_path):
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), "--dataset", "nope", "--out", tmp_path / "o",
           match="gsm8k, humaneval, mix, shift, tinyshakespeare, wikitext2")


def test_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), *SMALL, "--out", blocker / "prof", match="cannot create")
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), *SMALL, "--out", blocker, match="not a directory")


def test_bad_options(cli, tmp_path):
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), "--batch-size", "0", "--out", tmp_path / "o",
           match="--batch-size must be at least 1")


def test_failure_while_writing_leaves_no_partial_directory(cli, tmp_path, monkeypatch):
    """The arrays are written, then the manifest write fails: nothing may remain."""
    def fail_manifest(*args, **kwargs):
        raise MoelessError("simulated failure writing the manifest")

    monkeypatch.setattr("moeless_cli.fileio.write_json_atomic", fail_manifest)
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), *SMALL, "--out", tmp_path / "o", match="simulated")
    assert list(tmp_path.iterdir()) == []


# ---- load_profile validation ---------------------------------------------------------------------

@pytest.fixture
def good_profile(tmp_path):
    manifest = {"kind": "recorded", "model": {"id": "m", "config_hash": "abc"}, "num_layers": 2, "num_experts": 4,
                "top_k": 1, "hidden_size": 3, "iterations": 2,
                "sizes": {"iterations": 2, "tokens": 3, "requests": 1, "samples": 1}}
    arrays = {
        "load": np.array([[[1, 1, 0, 0], [0, 2, 0, 0]], [[0, 0, 1, 0], [0, 0, 0, 1]]], np.int32),
        "iteration_phase": np.array([0, 1], np.uint8),
        "topk_ids": np.array([[[0], [1]], [[1], [1]], [[2], [3]]], np.uint8),
        "token_request": np.zeros(3, np.int32),
        "token_phase": np.array([0, 0, 1], np.uint8),
        "token_iteration": np.array([0, 0, 1], np.int32),
        "router_inputs": np.ones((1, 2, 3), np.float16),
        "router_input_tokens": np.array([2]),
    }
    return save_profile(tmp_path / "p", manifest, arrays), manifest, arrays


def test_load_profile_round_trip(good_profile):
    path, _, arrays = good_profile
    profile = load_profile(path)
    assert profile.model_id == "m" and profile.config_hash == "abc" and profile.top_k == 1
    assert np.array_equal(profile.load, arrays["load"]) and profile.router_inputs.shape == (1, 2, 3)
    assert profile.layer_load().tolist() == [[1, 1, 1, 0], [0, 2, 0, 1]]


def test_load_profile_missing_and_corrupt(tmp_path, good_profile):
    path, _, _ = good_profile
    with pytest.raises(MoelessError, match="profile not found"):
        load_profile(tmp_path / "nope")
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(MoelessError, match="manifest.json is not valid JSON"):
        load_profile(path)


def test_load_profile_wrong_schema_and_missing_field(good_profile):
    path, manifest, _ = good_profile
    on_disk = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**on_disk, "schema": "other/v9"}))
    with pytest.raises(MoelessError, match="schema is 'other/v9'"):
        load_profile(path)
    del on_disk["num_experts"]
    (path / "manifest.json").write_text(json.dumps(on_disk))
    with pytest.raises(MoelessError, match="missing field.*num_experts"):
        load_profile(path)


def test_load_profile_shape_mismatch(tmp_path, good_profile):
    _, manifest, arrays = good_profile
    save_profile(tmp_path / "a", {**manifest, "num_experts": 5}, arrays)
    with pytest.raises(MoelessError, match="load.safetensors array load has shape"):
        load_profile(tmp_path / "a")
    save_profile(tmp_path / "b", manifest, {**arrays, "token_request": np.zeros(4, np.int32)})
    with pytest.raises(MoelessError, match="token_request has 4 tokens, the manifest says 3"):
        load_profile(tmp_path / "b")


def test_load_profile_missing_or_corrupt_array_file(good_profile):
    path, _, _ = good_profile
    (path / "routing.safetensors").write_bytes(b"garbage")
    with pytest.raises(MoelessError, match="routing.safetensors is not a readable safetensors file"):
        load_profile(path)
    (path / "routing.safetensors").unlink()
    with pytest.raises(MoelessError, match="missing routing.safetensors"):
        load_profile(path)


def test_load_profile_imports_no_torch(good_profile):
    import subprocess
    import sys

    path, _, _ = good_profile
    code = ("import sys; from moeless_cli.profiling import load_profile; "
            f"load_profile({str(path)!r}); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"



def test_thread_choice(cli, tmp_path):
    from moeless_cli.jobs.profile import choose_threads

    model = str(cached_tiny_checkpoint("mixtral"))
    assert choose_threads(model, "cpu", None) == 1  # hidden 32: one thread
    assert choose_threads(model, "cuda", None) is None and choose_threads(model, "cpu", 0) is None
    assert choose_threads(model, "cpu", 3) == 3
    _fails(cli, "--model", model, "--threads", "-1", "--out", tmp_path / "o", match="--threads must be 0")


def test_model_failure_mid_run_is_one_line(cli, tmp_path, monkeypatch):
    """A forward pass that fails (here: a simulated out-of-memory) exits cleanly with no output."""
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated: not enough memory")

    monkeypatch.setattr("moeless_cli.profiling.runner.generate", out_of_memory)
    _fails(cli, "--model", cached_tiny_checkpoint("mixtral"), *SMALL, "--out", tmp_path / "o",
           match="failed during profiling: RuntimeError: simulated")
    assert list(tmp_path.iterdir()) == []


def test_router_without_topk_ids_is_refused():
    """A router returning bare logits (older transformers) must not be recorded as routing."""
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.profiling.recorder import RoutingRecorder

    recorder = RoutingRecorder(load_moe_model(cached_tiny_checkpoint("mixtral")), router_samples=0)
    with pytest.raises(MoelessError, match="does not return its top-2 expert ids"):
        recorder._check_router_output(torch.randn(3, 8))  # logits, not ids
    with pytest.raises(MoelessError, match="transformers 5 router API"):
        recorder._check_router_output(None)  # the hook saw a bare tensor, not a tuple
    recorder._check_router_output(torch.zeros(3, 2, dtype=torch.long))
    assert recorder._checked


def test_reservoir_matches_sequential_algorithm_r():
    """The vectorised per-pass reservoir gives the same slots as Algorithm R run token by token."""
    from moeless_cli.profiling.recorder import RoutingRecorder

    recorder = RoutingRecorder.__new__(RoutingRecorder)  # only the sampling state is needed
    recorder.router_samples, recorder.tokens_seen = 5, 0
    recorder.rng = np.random.default_rng(7)
    reservoir = np.full(5, -1)
    for n in (3, 4, 1, 6, 2, 9):
        slots, local = recorder._reservoir_picks(n)
        reservoir[slots] = recorder.tokens_seen + local
        recorder.tokens_seen += n
    assert sorted(set(reservoir.tolist())) == sorted(reservoir.tolist()) and reservoir.min() >= 0
    expected = np.full(5, -1)  # sequential replay with the same random draws
    rng, seen = np.random.default_rng(7), 0
    for n in (3, 4, 1, 6, 2, 9):
        tokens = seen + np.arange(n)
        draws = tokens if seen + n <= 5 else np.where(tokens < 5, tokens, rng.integers(0, tokens + 1))
        for t, j in zip(tokens, draws):
            if j < 5:
                expected[j] = t
        seen += n
    assert np.array_equal(reservoir, expected)
