"""`moeless train-predictor` end to end on a tiny random model profiled by `moeless profile`."""

import json
import shutil

import pytest
from tiny_models import cached_tiny_checkpoint, single_thread_torch

from moeless_cli.errors import MoelessError
from moeless_cli.predictor import load_predictor
from moeless_cli.profiling import load_profile

METRICS = {"topk_recall", "load_tvd", "pearson", "straggler_recall"}
METHODS = {"moeless", "moeless-paper", "reused-gate", "ema", "last"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    """A profile of a tiny 3-layer Mixtral with every token's router inputs recorded."""
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    root = tmp_path_factory.mktemp("predictor")
    prompts = root / "prompts.jsonl"
    texts = [f"request {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 4) for i in range(12)]
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = root / "profile"
    args = ["profile", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", prompts, "--num-prompts", "12",
            "--batch-size", "4", "--max-new-tokens", "2", "--max-prompt-tokens", "32", "--router-samples", "100000",
            "--out", out, "--json"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_train_predictor_json_core_and_file(cli, profile_dir, tmp_path):
    out = tmp_path / "pred.safetensors"
    result = cli("train-predictor", "--profile", profile_dir, "--distance", "1", "--distance", "2",
                 "--epochs", "2", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(e["layer"], e["distance"]) for e in doc["layers"]] == [(1, 1), (2, 1), (2, 2)]
    for entry in doc["layers"]:
        assert METHODS <= set(entry["methods"])
        for method in METHODS:
            metrics = entry["methods"][method]
            assert METRICS <= set(metrics)
            assert 0.0 <= metrics["load_tvd"] <= 1.0 and 0.0 <= metrics["straggler_recall"] <= 1.0
        assert 0.0 <= entry["methods"]["moeless"]["topk_recall"] <= 1.0
    assert METHODS <= set(doc["summary"]) and METRICS <= set(doc["summary"]["moeless"])
    assert doc["split"]["held_out"] == "requests" and doc["split"]["test_requests"] >= 1
    assert doc["predictor_parameters"] <= doc["gate_parameters"] + 8 + 1  # a gate, plus calibration

    profile = load_profile(profile_dir)
    predictor = load_predictor(out, expected_config_hash=profile.config_hash)
    assert predictor.manifest["model_id"] == profile.model_id and predictor.distances == [1, 2]
    assert predictor.manifest["metrics"]["summary"] == doc["summary"]
    hidden = profile.router_inputs[:256, 0].astype("float32")
    counts = predictor.predict_layer_load(hidden, layer=1, distance=1)
    assert counts.shape == (8,) and counts.sum() == pytest.approx(256 * 2)
    with pytest.raises(MoelessError, match="not for this model"):
        load_predictor(out, expected_config_hash="0" * 16)


def test_default_out_eval_profile_and_table(cli, profile_dir, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(profile_dir, train)
    result = cli("train-predictor", "--profile", train, "--eval-profile", profile_dir, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert (train / "predictor.safetensors").is_file()
    assert "moeless-paper" in result.stdout and "reused-gate" in result.stdout


def test_eval_profile_of_another_model_is_refused(cli, profile_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(profile_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["config_hash"] = "f" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "p.safetensors"
    result = cli("train-predictor", "--profile", profile_dir, "--eval-profile", other, "--out", out)
    assert result.exit_code != 0 and "config hash" in result.stderr
    assert not out.exists()


def test_bad_input_errors(cli, profile_dir, tmp_path):
    csv = tmp_path / "loads.csv"
    csv.write_text("layer,expert,count\n0,0,5\n0,1,3\n1,0,2\n1,1,7\n")
    imported = tmp_path / "imported"
    assert cli("profile", "import", csv, "--out", imported, "--json").exit_code == 0
    result = cli("train-predictor", "--profile", imported)
    assert result.exit_code != 0 and "--router-samples" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output

    result = cli("train-predictor", "--profile", profile_dir, "--distance", "3", "--out", tmp_path / "x.safetensors")
    assert result.exit_code != 0 and "distance 3" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()

    result = cli("train-predictor", "--profile", tmp_path / "missing")
    assert result.exit_code != 0 and "profile not found" in result.stderr


def test_several_profiles_choose_the_anchor_on_held_out_domains(cli, profile_dir, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(profile_dir, second)
    out = tmp_path / "p.safetensors"
    result = cli("train-predictor", "--profile", profile_dir, "--profile", second, "--epochs", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all(e["anchor_chosen_on"] == "held-out domains" for e in doc["layers"])
    assert load_predictor(out).manifest["train_profiles"] == [str(profile_dir), str(second)]
