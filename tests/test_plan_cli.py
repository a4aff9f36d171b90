"""`moeless plan` and `moeless plan export` through the CLI."""

from __future__ import annotations

from importlib import resources

import orjson
import pytest

OLMOE = resources.files("moeless_cli") / "data/loads/olmoe-1b-7b/olmoe_expert_counts.csv"


def write_csv(path, rows):
    path.write_text("layer,expert,count\n" + "".join(f"{l},{e},{c}\n" for l, e, c in rows))
    return path


@pytest.fixture
def small_csv(tmp_path):
    counts = [90, 10, 10, 10, 40, 5, 5, 30]
    return write_csv(tmp_path / "loads.csv", [(l, e, c * (l + 1)) for l in range(2) for e, c in enumerate(counts)])


def test_plan_json_output_and_plan_file(cli, small_csv, tmp_path):
    out = tmp_path / "plan.json"
    result = cli("plan", "--loads", small_csv, "--gpus", "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["out"] == str(out) and doc["solver"] == "ilp" and doc["solve_seconds"] >= 0
    assert [r["layer"] for r in doc["layers"]] == [0, 1]
    for row in doc["layers"]:
        assert set(row) >= {"layer", "imbalance_before", "imbalance_after", "replicas", "gap"}
        assert row["imbalance_after"] <= 1.0 + 1e-6 < row["imbalance_before"]
    plan = orjson.loads(out.read_bytes())
    assert plan["schema"] == "moeless.plan/v1" and plan["num_experts"] == 8 and plan["loads_hash"]


def test_plan_default_out_and_human_table(cli, small_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("plan", "--loads", small_csv, "--gpus", "2", "--solver", "eplb", "--slots-per-gpu", "5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plans" / "loads-eplb-g2.json").is_file()
    assert "imbalance" in result.stdout


def test_plan_on_shipped_olmoe_counts_with_where(cli, tmp_path):
    out = tmp_path / "olmoe.json"
    result = cli("plan", "--loads", OLMOE, "--where", "corpus=code", "--where", "shape=4x512", "--gpus", "8",
                 "--slots-per-gpu", "10", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert len(doc["layers"]) == 16
    assert max(r["imbalance_after"] for r in doc["layers"]) <= 1.005
    assert all(r["replicas"] <= 64 + 8 - 1 for r in doc["layers"])


def test_previous_plan_and_nodes_and_memory(cli, small_csv, tmp_path):
    first = tmp_path / "a.json"
    assert cli("plan", "--loads", small_csv, "--gpus", "4", "--nodes", "2", "--out", first, "--json").exit_code == 0
    result = cli("plan", "--loads", small_csv, "--gpus", "4", "--nodes", "2", "--previous-plan", first,
                 "--gpu-memory-gb", "1", "--expert-mb", "100", "--out", tmp_path / "b.json", "--json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert all(r["moved"] == 0 for r in doc["layers"])  # same loads: nothing has to move


def test_export_sglang(cli, small_csv, tmp_path):
    plan = tmp_path / "plan.json"
    assert cli("plan", "--loads", small_csv, "--gpus", "4", "--out", plan, "--json").exit_code == 0
    result = cli("plan", "export", "--format", "sglang", plan, "--json")
    assert result.exit_code == 0, result.output
    info = orjson.loads(result.stdout)
    mapping = orjson.loads((tmp_path / "plan.sglang.json").read_bytes())
    rows = mapping["physical_to_logical_map"]
    assert len(rows) == 2 and len(rows[0]) == info["num_physical"] and info["num_physical"] % 4 == 0
    assert all(set(row) == set(range(8)) for row in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "4", "--gpu-memory-gb", "0.001", "--expert-mb", "1"], "GB more than"),
        (["--gpus", "2", "--slots-per-gpu", "3"], "more slots needed"),
        (["--gpus", "3", "--nodes", "2"], "multiple of --nodes"),
        (["--gpus", "4", "--solver", "magic"], "unknown --solver"),
        (["--gpus", "4", "--replica-budget", "3"], "replica-budget"),
        (["--gpus", "4", "--gpu-memory-gb", "8"], "--expert-mb"),
    ],
)
def test_bad_input_is_one_line_error(cli, small_csv, tmp_path, args, message):
    out = tmp_path / "never.json"
    result = cli("plan", "--loads", small_csv, *args, "--out", out, "--json")
    assert result.exit_code != 0
    assert message in result.stderr and result.stderr.count("\n") == 1 and result.stdout == ""
    assert not out.exists()


def test_malformed_csv_and_plan_name_row_and_field(cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,expert,count\n0,0,5\n0,x,3\n")
    result = cli("plan", "--loads", bad, "--gpus", "2", "--json")
    assert result.exit_code != 0 and "line 3" in result.stderr
    plan = tmp_path / "plan.json"
    plan.write_bytes(orjson.dumps({"schema": "moeless.plan/v1", "num_gpus": 2, "num_layers": 1, "num_experts": 2,
                                   "layers": [{"layer": 0, "replicas": [{"expert": 0, "gpu": 0, "share": 1},
                                                                        {"expert": 1, "gpu": 7, "share": 1}]}]}))
    result = cli("plan", "export", plan)
    assert result.exit_code != 0 and "layers[0].replicas[1].gpu" in result.stderr
    result = cli("plan", "--gpus", "2", "--json")
    assert result.exit_code != 0 and "--profile" in result.stderr


def test_plan_from_profile_directory(cli, small_csv, tmp_path):
    from moeless_cli.profiling.importer import import_loads_csv

    profile_dir, _ = import_loads_csv(small_csv, {}, out=tmp_path / "prof")
    result = cli("plan", "--profile", profile_dir, "--gpus", "4", "--out", tmp_path / "p.json", "--json")
    assert result.exit_code == 0, result.output
    plan = orjson.loads((tmp_path / "p.json").read_bytes())
    assert plan["model_id"] == "loads" and plan["num_layers"] == 2
    assert max(r["imbalance_after"] for r in orjson.loads(result.stdout)["layers"]) <= 1.0 + 1e-6


def test_unwritable_out_is_one_line_error(cli, small_csv, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = cli("plan", "--loads", small_csv, "--gpus", "2", "--out", blocker / "plan.json", "--json")
    assert result.exit_code != 0 and result.stderr.startswith("error:") and result.stdout == ""


def test_joint_plan_shares_memory_across_layers(cli, tmp_path):
    flat = [(0, e, 100) for e in range(8)]
    skewed = [(1, e, c) for e, c in enumerate([400, 200, 50, 20, 10, 10, 5, 5])]
    csv = write_csv(tmp_path / "two.csv", flat + skewed)
    result = cli("plan", "--loads", csv, "--gpus", "4", "--joint", "--gpu-memory-gb", "0.5", "--expert-mb", "100",
                 "--out", tmp_path / "j.json", "--json")
    assert result.exit_code == 0, result.output
    layers = orjson.loads(result.stdout)["layers"]
    assert layers[1]["replicas"] > layers[0]["replicas"] == 8  # 5 slots per GPU in all: the skewed layer gets them
    assert layers[1]["imbalance_after"] < layers[1]["imbalance_before"]
