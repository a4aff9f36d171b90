"""`moeless serve`: the fixed --json core, tokens identical to plain transformers, errors, Ctrl-C."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiny_models import cached_tiny_checkpoint, plain_greedy_outputs

SMALL = ("--max-requests", "4", "--max-output-tokens", "4", "--max-prompt-tokens", "12", "--time-scale", "200")


def run_json(cli, *args):
    result = cli("serve", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_core(report, policy):
    assert report["policy"] == policy
    req = report["requests"]
    assert req["submitted"] == req["completed"] + req["failed"]
    for name in ("ttft", "tpot", "e2e"):
        assert set(report["latency_s"][name]) == {"mean", "p50", "p90", "p99"}
    assert set(report["moe_layer_ms"]) == {"mean", "p50", "p99"}
    cost = report["cost"]
    assert {"gbs_proxy", "gbs_live", "gbs_per_invocation", "serverless_gpu_s", "serverful_gpu_s", "usd_serverless",
            "usd_serverful"} <= set(cost)
    if req["completed"]:  # one billing rule for every policy: live instances and invocations both cost
        assert cost["gbs_live"] > 0 and cost["gbs_per_invocation"] > 0
        assert cost["gbs_proxy"] in (cost["gbs_live"], cost["gbs_per_invocation"])  # the paper's asymmetric rule
    assert set(report["functions"]) == {"cold_starts", "warm_hits", "created", "retired", "bytes_moved"}
    if req["completed"]:  # the starting replicas are warm: layers that ran on them are warm hits
        assert report["functions"]["warm_hits"] > 0
    assert report["throughput_tokens_per_s"] > 0


def plain_outputs(model_dir, args):
    """What plain transformers generates, greedy, for the same prompts and output lengths."""
    return plain_greedy_outputs(model_dir, args)


@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_serve_json_core_and_identical_tokens(cli, tmp_path, family):
    model = cached_tiny_checkpoint(family)
    out = tmp_path / "report.json"
    report = run_json(cli, "--model", model, "--workers", "3", *SMALL, "--token-budget", "16", "--out", out)
    check_core(report, "moeless")
    assert report["lossy"] is False
    assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == plain_outputs(model, SMALL)
    assert json.loads(out.read_text())["requests"]["completed"] == 4
    assert report["functions_measured"]["created"] >= 8 * 3  # every expert copied onto a worker


@pytest.mark.parametrize("policy,extra", [("static", ()), ("eplb", ()), ("eplb+balanced", ()),
                                          ("moeless-paper", ("--batching", "paper")), ("oracle", ())])
def test_serve_other_policies(cli, policy, extra):
    model = cached_tiny_checkpoint("mixtral")
    report = run_json(cli, "--model", model, "--policy", policy, "--workers", "2", *SMALL, *extra)
    check_core(report, policy)
    assert report["requests"]["completed"] == 4
    assert report["lossy"] is (policy == "oracle")
    if policy != "oracle":
        assert report["outputs"] == plain_outputs(model, SMALL)


def write_plan_file(path, num_experts, num_layers, gpus, config_hash):
    from moeless_cli.plan_io import write_plan
    from moeless_cli.planning.solvers.static import static_plan

    write_plan(path, static_plan(num_layers, num_experts, gpus), {"config_hash": config_hash, "model_id": "x"})
    return path


def test_serve_with_plan(cli, tmp_path):
    from moeless_cli.models.loading import config_hash, read_model_config

    model = cached_tiny_checkpoint("mixtral")
    plan = write_plan_file(tmp_path / "plan.json", 8, 3, 2, config_hash(read_model_config(model)))
    report = run_json(cli, "--model", model, "--plan", plan, *SMALL)
    assert report["workers"] == 2  # from the plan
    assert report["requests"]["completed"] == 4


def test_serve_refuses_mismatches_before_loading(cli, tmp_path):
    from moeless_cli.models.loading import config_hash, read_model_config
    from moeless_cli.predictor.store import FORMAT, FORMAT_VERSION, save_predictor

    model = cached_tiny_checkpoint("mixtral")
    other = write_plan_file(tmp_path / "other.json", 8, 3, 2, "0123456789abcdef")
    result = cli("serve", "--model", model, "--plan", other, "--json")
    assert result.exit_code != 0 and "config hash" in result.stderr and result.stdout == ""
    mine = write_plan_file(tmp_path / "plan4.json", 8, 3, 4, config_hash(read_model_config(model)))
    result = cli("serve", "--model", model, "--plan", mine, "--workers", "2", "--json")
    assert result.exit_code != 0 and "only 2 workers" in result.stderr
    wrong_shape = write_plan_file(tmp_path / "plan16.json", 16, 3, 2, None)
    result = cli("serve", "--model", model, "--plan", wrong_shape, "--json")
    assert result.exit_code != 0 and "16 experts" in result.stderr
    predictor = save_predictor(tmp_path / "p.safetensors", {"format": FORMAT, "version": FORMAT_VERSION,
                                                            "config_hash": "feedfacefeedface", "model_id": "y"},
                               {"w": np.zeros(2, dtype=np.float32)})
    result = cli("serve", "--model", model, "--predictor", predictor, "--json")
    assert result.exit_code != 0 and "predictor" in result.stderr and "config hash" in result.stderr
    result = cli("serve", "--model", model, "--policy", "nope")
    assert result.exit_code != 0 and "--policy" in result.stderr


def test_ctrl_c_writes_partial_report(cli, tmp_path, monkeypatch):
    from moeless_cli.serving.engine import ServeEngine

    real_run, calls = ServeEngine.run, []

    def interrupting_run(self, iteration):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self, iteration)

    monkeypatch.setattr(ServeEngine, "run", interrupting_run)
    out = tmp_path / "partial.json"
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), *SMALL, "--out", out, "--json")
    assert result.exit_code == 130
    report = json.loads(result.stdout)
    assert report["interrupted"] is True
    req = report["requests"]
    assert req["submitted"] == 4 and req["failed"] >= 1 and req["completed"] + req["failed"] == 4
    assert json.loads(out.read_text())["interrupted"] is True


def write_gate_predictor(path, model_dir):
    """A predictor file whose models are the target layers' own gates (the reused-gate baseline)."""
    from moeless_cli.models import load_moe_model
    from moeless_cli.predictor.store import FORMAT, FORMAT_VERSION, save_predictor

    loaded = load_moe_model(model_dir)
    tensors, entries = {}, []
    for layer in (1, 2):
        gate = loaded.router(layer).weight.detach().float().numpy()
        for method in ("moeless", "paper"):
            tensors[f"{method}.d1.l{layer}.weight"] = gate
        entries.append({"layer": layer, "distance": 1, "input_layer": layer - 1, "blend_weight": 1.0,
                        "count_mode": "hard", "ema_alpha": 0.5})
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "model_id": "tiny", "num_experts": 8, "top_k": 2,
                "score": "softmax", "config_hash": loaded.config_hash, "entries": entries}
    return save_predictor(path, manifest, tensors)


@pytest.mark.parametrize("policy", ["moeless", "moeless-paper"])
def test_serve_with_predictor_prewarms_and_keeps_tokens(cli, tmp_path, policy):
    model = cached_tiny_checkpoint("mixtral")
    predictor = write_gate_predictor(tmp_path / "gate.safetensors", model)
    report = run_json(cli, "--model", model, "--predictor", predictor, "--policy", policy, "--workers", "2", *SMALL,
                      "--keep-alive", "0.5")
    check_core(report, policy)
    assert report["predictor"]["predictions"] > 0
    assert report["predictor"]["method"] == ("paper" if policy == "moeless-paper" else "moeless")
    assert report["online_step_ms"]["mean"] is not None
    assert report["outputs"] == plain_outputs(model, SMALL)


def test_serve_with_profile_history_and_eplb(cli, tmp_path):
    model = cached_tiny_checkpoint("mixtral")
    prof = tmp_path / "prof"
    result = cli("profile", "--model", model, "--dataset", "gsm8k", "--num-prompts", "4", "--batch-size", "4",
                 "--max-new-tokens", "2", "--out", prof, "--json")
    assert result.exit_code == 0, result.output
    report = run_json(cli, "--model", model, "--profile", prof, "--policy", "eplb", "--workers", "3", *SMALL)
    check_core(report, "eplb")
    assert report["outputs"] == plain_outputs(model, SMALL)
    # eplb's first plan is made from the profile: 3 workers x 4 slots hold extra replicas
    assert report["functions"]["created"] > 8 * 3
    other = cached_tiny_checkpoint("olmoe")
    result = cli("serve", "--model", other, "--profile", prof, "--json")
    assert result.exit_code != 0 and "profile" in result.stderr


def test_failed_iteration_fails_its_requests_and_counts_add_up(cli, monkeypatch):
    from moeless_cli.serving.runtime import ExpertParallelRuntime

    real, calls = ExpertParallelRuntime.moe_forward, []

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("injected expert failure")
        return real(self, *args)

    monkeypatch.setattr(ExpertParallelRuntime, "moe_forward", flaky)
    report = run_json(cli, "--model", cached_tiny_checkpoint("mixtral"), "--workers", "2", *SMALL)
    req = report["requests"]
    assert req["failed"] >= 1 and req["completed"] + req["failed"] == req["submitted"] == 4
    assert "injected expert failure" in report["errors"][0]
