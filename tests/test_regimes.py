"""benchmarks/regimes.py: the regime table's rows, targets, saved results and failed runs (no full bench run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "regimes.py"


@pytest.fixture(scope="module")
def regimes():
    spec = importlib.util.spec_from_file_location("regimes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["regimes"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("regimes", None)


def bench_doc(means: dict[str, float], p99: dict[str, float] | None = None) -> dict:
    """A bench --json document with these mean (and p99) MoE-layer milliseconds per system."""
    p99 = p99 or {name: 2 * mean for name, mean in means.items()}
    return {"setting": {"requests": 20, "time_model": "physical", "split": {"kind": "held-out"}},
            "systems": {name: {"moe_layer_ms": {"mean": mean, "p99": p99[name]}} for name, mean in means.items()}}


MEANS = {"static": 1.0, "eplb": 1.2, "eplb+balanced": 0.9, "oracle": 0.5, "moeless-paper": 1.1, "moeless": 0.72,
         "bound": 0.7}


def test_a_row_names_the_best_other_lossless_system_and_judges_each_target(regimes):
    row = regimes.cell_row("mixtral", "prefill", bench_doc(MEANS))
    assert row["best_other"] == "eplb+balanced"  # the lossy oracle is never the reference
    assert row["moeless_vs_best_other"] == pytest.approx(0.8) and row["moeless_vs_bound"] == pytest.approx(0.72 / 0.7)
    assert row["moeless_p99_vs_best_other_p99"] == pytest.approx(0.8)
    assert row["targets"] == {"best": True, "prefill": True, "bound": True, "p99": True}
    slower = regimes.cell_row("olmoe", "decode", bench_doc(MEANS | {"moeless": 0.95}))
    assert slower["targets"] == {"best": False, "prefill": None, "bound": False, "p99": False}


def test_render_prints_one_table_with_failed_and_missing_cells(regimes, tmp_path, capsys):
    cell = tmp_path / "mixtral-decode"
    cell.mkdir()
    (cell / "result.json").write_text(json.dumps(bench_doc(MEANS)))
    (tmp_path / "mixtral-prefill").mkdir()
    (tmp_path / "mixtral-prefill" / "result.json").write_text("{not json")
    code = regimes.main(["--render", "--out", str(tmp_path), "--models", "mixtral", "--regimes", "decode", "prefill",
                         "shift"])
    table = capsys.readouterr().out
    assert code == 1  # not every cell measured
    assert table.count("| Mixtral-8x7B, 8x A6000 |") == 3
    assert "| 0.800 (eplb+balanced) |" in table and "| yes | yes | yes | yes |" not in table  # decode: no prefill target
    assert "FAILED: unreadable" in table and "not run: no" in table and "1 of 3 cells measured" in table
    regimes.main(["--render", "--json", "--out", str(tmp_path), "--models", "mixtral", "--regimes", "decode"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "ok" and rows[0]["mean_ms"]["bound"] == 0.7 and "oracle" not in rows[0]["mean_ms"]


def test_a_saved_result_of_the_same_arguments_is_not_run_again(regimes, tmp_path):
    args = regimes.bench_args(regimes.MODELS["olmoe"], regimes.REGIMES["shift"], 100, tmp_path / "stages", False, [])
    assert args[args.index("--dataset") + 1] == "shift" and "--no-pareto" in args and "--json" in args
    cell = tmp_path / "olmoe-shift"
    cell.mkdir()
    (cell / "result.json").write_text(json.dumps(bench_doc(MEANS)))
    (cell / "args.json").write_text(json.dumps(args))
    assert regimes.run_cell(args, cell, force=False)[0] == "saved"


def test_a_failed_run_is_reported_and_the_others_go_on(regimes, tmp_path, capsys):
    code = regimes.main(["--out", str(tmp_path), "--models", "mixtral", "olmoe", "--regimes", "decode",
                         "--requests", "5", "--time-scale", "-1"])  # passed through: bench refuses it at once
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("FAILED: exit 2") == 2 and "--time-scale must be positive" in captured.err
    assert captured.out.count("| FAILED: exit 2") == 2 and not (tmp_path / "mixtral-decode" / "result.json").exists()
