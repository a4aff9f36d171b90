"""`moeless bench` end to end on a tiny model built by the test (a handful of requests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny_models import cached_tiny_checkpoint

SYSTEMS = {"static", "eplb", "eplb+balanced", "oracle", "moeless-paper", "moeless"}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "prompts.jsonl"
    texts = [f"question {i}: " + "how do experts share the load " * (1 + i % 3) for i in range(8)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _args(out, prompts, *extra):
    return ["bench", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", prompts, "--num-prompts", "8",
            "--epochs", "2", "--max-requests", "6", "--time-scale", "20", "--out", out, *extra]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, prompts):
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    out = tmp_path_factory.mktemp("bench-out") / "run"
    result = CliRunner().invoke(app, [str(a) for a in _args(out, prompts, "--json", "--ablation")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_ablation_removes_one_part_of_moeless_at_a_time(bench_run):
    from moeless_cli.bench.ablation import VARIANTS

    out, doc = bench_run
    rows = doc["ablation"]
    assert [row["variant"] for row in rows] == list(VARIANTS) and rows[0]["variant"] == "moeless"
    assert rows[0]["vs_moeless"] == 1.0
    for row in rows:
        assert row["moe_layer_ms"] > 0 and row["moe_layer_p99_ms"] > 0 and row["gbs_live"] > 0
        assert row["vs_moeless"] == row["moe_layer_ms"] / rows[0]["moe_layer_ms"]
    assert (out / "plan-mixtral-8x7b-a6000-8-no-spares.json").exists()  # its plan stage, cached like the main one
    assert "## moeless ablation" in (out / "report.md").read_text()


def test_json_core_and_files(bench_run):
    out, doc = bench_run
    assert doc["mode"] == "sim" and set(doc["systems"]) == SYSTEMS | {"bound"}
    setting = doc["setting"]
    assert setting["preset"]["name"] == "mixtral-8x7b" and setting["hardware"] == "a6000" and setting["gpus"] == 8
    assert setting["trace"] == "azure-conv" and setting["requests"] == 6
    assert setting["model_path"] == setting["model"]  # the checkpoint directory the test built (a local path wins)
    assert setting["serverless_replica_cap_per_layer"] == 8 * setting["slots_per_gpu_per_layer"]  # within memory
    for name in SYSTEMS:
        core = doc["systems"][name]
        assert core["policy"] == name
        assert core["requests"] == {"submitted": 6, "completed": 6, "failed": 0}
        assert set(core["latency_s"]) == {"ttft", "tpot", "e2e"}
        cost = core["cost"]
        assert set(cost) >= {"gbs_proxy", "gbs_live", "gbs_per_invocation", "serverless_gpu_s", "serverful_gpu_s",
                             "usd_serverless", "usd_serverful"}
        assert cost["gbs_live"] > 0 and cost["gbs_per_invocation"] > 0  # one rule, every system billed
        serverless = name in ("moeless-paper", "moeless")  # the paper's asymmetric proxy, kept as published
        assert cost["gbs_proxy"] == cost["gbs_per_invocation" if serverless else "gbs_live"]
        assert set(doc["ratios"][name]) >= {"gbs_live_vs_static", "gbs_live_vs_eplb", "gbs_per_invocation_vs_static",
                                            "gbs_vs_static", "gbs_vs_eplb", "moe_vs_static", "moe_vs_eplb"}
        assert set(core["functions"]) == {"cold_starts", "warm_hits", "created", "retired", "bytes_moved"}
        assert core["lossy"] == (name == "oracle")
        assert core["moe_layer_ms"]["mean"] >= doc["systems"]["oracle"]["moe_layer_ms"]["mean"] - 1e-12
    assert doc["ratios"]["static"]["moe_vs_static"] == pytest.approx(1.0)
    assert doc["ratios"]["eplb"]["gbs_live_vs_eplb"] == pytest.approx(1.0)
    for name in ("bench.json", "report.md", "moe_latency_cdf.png", "cost.png", "pareto.png", "predictor.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "moe_latency_cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "bench.json").read_text())["systems"]["moeless"]["policy"] == "moeless"
    assert "| moeless |" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "Against the paper: moeless / static EP" in report
    assert report.count("As published") == 1 and "| eplb+balanced |" in report


def test_pareto_has_one_row_per_system_and_memory_point(bench_run):
    from moeless_cli.bench.pareto import PARETO_SYSTEMS, memory_points

    out, doc = bench_run
    setting, pareto = doc["setting"], doc["pareto"]
    points = memory_points(setting["preset"]["num_experts"], setting["gpus"], setting["slots_per_gpu_per_layer"])
    assert [p.replicas_per_layer for p in points] == [8, 12, 16, 24]  # E + 0, G/2, G; 2G = 4G = memory (3 slots)
    assert pareto["systems"] == list(PARETO_SYSTEMS) and 0 < pareto["iterations"] <= 400
    rows = pareto["rows"]
    assert sorted((r["system"], r["replicas_per_layer"]) for r in rows) == sorted(
        (s, p.replicas_per_layer) for s in PARETO_SYSTEMS for p in points)
    for row in rows:
        assert row["moe_layer_ms"] > 0 and row["gbs_live"] > 0 and row["gbs_per_invocation"] > 0
        assert row["live_replicas_per_layer"] <= row["replicas_per_layer"] + 1e-9  # held within the point
    assert any(row["pareto_optimal"] for row in rows)
    smallest = [r for r in rows if r["replicas_per_layer"] == 8]  # E + 0: one replica per expert, nothing to scale
    # (live GB·s still differs by the run's length: host decisions are charged)
    assert {round(r["live_replicas_per_layer"], 6) for r in smallest} == {8.0}
    assert "## Latency-memory Pareto" in (out / "report.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_physical_time_and_held_out_traffic_by_default(bench_run):
    out, doc = bench_run
    setting = doc["setting"]
    assert setting["time_model"] == "physical" and setting["decision_cost"] == "measured"
    split = setting["split"]
    train, replayed = set(split["training_requests"]), set(split["replay_requests"])
    assert split["kind"] == "held-out" and train and replayed and train.isdisjoint(replayed)
    assert train | replayed == set(range(8))  # the 8 prompts of the file: half learn, half are replayed
    assert split["trace_training_window"] == [0, 6] and split["trace_replay_window"] == [6, 12]
    from moeless_cli.predictor.store import read_manifest

    manifest = read_manifest(out / "predictor.safetensors")  # the predictors saw the training requests alone
    assert manifest["train_requests"] == split["training_requests"]
    assert "held-out" in (out / "report.md").read_text()
    for name in ("moeless", "moeless-paper"):
        assert doc["systems"][name]["moe_layer_parts_ms"]["decide"]["mean"] > 0  # host decisions are charged
    assert doc["systems"]["static"]["moe_layer_parts_ms"]["decide"]["mean"] == 0


def test_in_sample_replays_what_the_learners_saw(cli, tmp_path, prompts):
    result = cli(*_args(tmp_path / "out", prompts, "--in-sample", "--time-model", "compute", "--decision-cost", "none",
                        "--json"))
    assert result.exit_code == 0, result.output
    setting = json.loads(result.stdout)["setting"]
    split = setting["split"]
    assert split["kind"] == "in-sample" and split["training_requests"] == split["replay_requests"] == list(range(8))
    assert split["trace_replay_window"] == [0, 6] and setting["time_model"] == "compute"
    assert setting["decision_cost"] == "none"
    assert "in-sample" in (tmp_path / "out" / "report.md").read_text()


def test_llama4_scout_preset_runs(cli, bench_run, prompts):
    out, _ = bench_run  # the tiny mixtral's top-2 of 8 feeds a top-1 of 16 (first expert, split in two)
    result = cli(*_args(out, prompts, "--preset", "llama-4-scout", "--max-requests", "10", "--json"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    setting = doc["setting"]
    assert setting["preset"]["name"] == "llama-4-scout" and setting["preset"]["top_k"] == 1
    assert setting["hardware"] == "h100" and setting["expert_split"] == 2  # the preset's hardware by default
    assert set(doc["systems"]) >= SYSTEMS and doc["stages"]["profile"]["reused"]
    for name in SYSTEMS:
        core = doc["systems"][name]
        assert core["requests"]["completed"] == 10 and core["moe_layer_ms"]["mean"] > 0
    assert 0 < doc["systems"]["bound"]["moe_layer_ms"]["mean"] <= doc["systems"]["moeless"]["moe_layer_ms"]["mean"]


def test_bound_is_the_lossless_floor_on_the_same_batches(bench_run):
    out, doc = bench_run
    bound = doc["systems"]["bound"]
    assert bound["policy"] == "bound" and not bound["lossy"] and bound["clairvoyant"]
    assert set(bound["moe_layer_ms"]) == {"mean", "p50", "p99"}
    assert set(bound["parts_mean_ms"]) == {"experts", "all_to_all", "fixed"}
    for name in SYSTEMS - {"oracle"}:  # every lossless system is at least as slow as the floor
        assert doc["systems"][name]["moe_layer_ms"]["mean"] >= bound["moe_layer_ms"]["mean"] * (1 - 1e-9)
        assert doc["ratios"][name]["moe_vs_bound"] >= 1 - 1e-9
    assert doc["ratios"]["bound"]["moe_vs_bound"] == pytest.approx(1.0)
    assert doc["ratios"]["bound"]["gbs_vs_static"] is None  # the floor is not a deployment: no cost
    report = (out / "report.md").read_text()
    assert "| bound |" in report and "clairvoyant lossless floor" in report


def test_cached_stages_are_reused_and_table_prints(cli, bench_run, prompts):
    out, _ = bench_run
    result = cli(*_args(out, prompts, "--batching", "paper", "--equal-budget"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()  # a table, not JSON
    doc = json.loads((out / "bench.json").read_text())
    assert doc["setting"]["batching"] == "paper"
    setting = doc["setting"]
    assert setting["serverless_replica_cap_per_layer"] == setting["replica_budget_per_layer"]  # --equal-budget
    assert doc["stages"]["profile"]["reused"] and doc["stages"]["predictor"]["reused"] and doc["stages"]["plan"]["reused"]


def test_model_fingerprint_follows_the_weights(tmp_path):
    import shutil

    from moeless_cli.bench.pipeline import model_fingerprint

    copy = tmp_path / "model"
    shutil.copytree(cached_tiny_checkpoint("mixtral"), copy)
    before = model_fingerprint(str(copy))
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # a re-trained model under the same name must not reuse stale cached stages
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(copy)) != before


def test_real_mode_runs_every_system_through_serve(cli, bench_run, prompts):
    out, _ = bench_run  # reuses the cached profile and predictor
    result = cli(*_args(out, prompts, "--mode", "real", "--gpus", "2", "--max-requests", "3", "--json"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "real" and set(doc["systems"]) == SYSTEMS
    for name, core in doc["systems"].items():
        assert core["policy"] == name and core["requests"]["completed"] == 3
        assert core["moe_layer_ms"]["mean"] > 0
        assert "layer_records" not in core  # used for the simulator check, not printed
    assert doc["stages"]["profile"]["reused"]
    check = doc["simulator_check"]  # each run predicted by the time model fitted on the others
    assert check["method"] == "leave-one-system-out" and set(check["systems"]) == SYSTEMS and check["workers"] == 2
    for name, row in check["systems"].items():
        assert row["calls"] > 0 and row["real_ms"] == pytest.approx(doc["systems"][name]["moe_layer_ms"]["mean"])
        assert row["sim_ms"] > 0 and row["error"] == pytest.approx(row["sim_ms"] / row["data_plane_ms"] - 1)
        assert row["real_ms"] == pytest.approx(row["data_plane_ms"] + row["control_ms"])
        assert 0 <= row["stalls"] < row["calls"] and np.isfinite(row["error_without_stalls"])
    assert check["max_abs_error"] == max(abs(r["error"]) for r in check["systems"].values())
    assert "Simulator vs real mode" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "gpt-9"], "unknown model preset"),
        (["--hardware", "tpu"], "unknown hardware"),
        (["--trace", "no-such-trace"], "trace not found"),
        (["--batching", "weekly"], "unknown --batching"),
        (["--mode", "live"], "unknown --mode"),
        (["--time-model", "fast"], "unknown --time-model"),
        (["--time-model", "default"], "unknown --time-model"),
        (["--decision-cost", "soon"], "--decision-cost"),
        (["--preset", "olmoe-1b-7b"], "top-8"),
    ],
)
def test_bad_input_is_one_line(cli, tmp_path, prompts, extra, message):
    out = tmp_path / "out"
    result = cli(*_args(out, prompts, *extra))
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (out / "bench.json").exists()


def test_auto_mode_simulates_a_cluster_larger_than_the_machine():
    from moeless_cli.jobs.bench import BenchRequest

    request = BenchRequest(gpus=8)
    request.resolve_mode(cuda_devices=0)
    assert request.mode == "sim"
    request = BenchRequest(gpus=2)
    request.resolve_mode(cuda_devices=4)
    assert request.mode == "real" and request.devices == ("cuda:0", "cuda:1")
    request = BenchRequest(gpus=2, mode="sim")
    request.resolve_mode(cuda_devices=4)
    assert request.mode == "sim"  # an explicit mode is kept
