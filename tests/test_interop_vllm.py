"""vLLM through the CLI: a saved EPLB load window -> profile -> plan -> physical_to_logical_map."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine_dumps import placement, plan_and_export, vllm_window
from moeless_cli.integrations.vllm import record_window
from moeless_cli.plan_io import read_plan
from moeless_cli.profiling import load_profile

E, LAYERS, P = 8, 3, 12
MAP = np.tile(np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]), (LAYERS, 1))  # vLLM's initial map: p % E


def window_rows(rows: int = 5, seed: int = 0) -> np.ndarray:
    """[rows, layers, P] physical slot counts."""
    return np.random.default_rng(seed).integers(0, 40, (rows, LAYERS, P))


def folded(window: np.ndarray) -> np.ndarray:
    out = np.zeros((*window.shape[:2], E))
    for p, e in enumerate(MAP[0]):
        out[..., e] += window[..., p]
    return out


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_window_is_folded_ordered_and_planned(cli, tmp_path, suffix):
    window = window_rows(6)
    window[4] = 0  # a row vLLM has not written yet
    dump = vllm_window(tmp_path / f"window{suffix}", window, MAP, step=2)
    result = cli("profile", "import", dump, "--out", tmp_path / "prof", "--json")
    assert result.exit_code == 0, result.output
    info = orjson.loads(result.stdout)
    assert info["format"] == "vllm-window" and info["layers"] == LAYERS and info["iterations"] == 5
    assert info["dense_layers_dropped"] == [] and info["samples_in_file"] == 6
    oldest_first = folded(window[[2, 3, 5, 0, 1]])  # rows from the write position on, empty row 4 skipped
    np.testing.assert_array_equal(load_profile(tmp_path / "prof").load, oldest_first)

    plan_file = tmp_path / "plan.json"
    summary = plan_and_export(cli, tmp_path / "prof", plan_file, 4, "vllm", solver="eplb")
    rows = orjson.loads((tmp_path / "plan.vllm.json").read_bytes())["physical_to_logical_map"]
    assert len(rows) == LAYERS and summary["num_physical"] % 4 == 0  # MoE rows only, P divisible by EP ranks
    plan, _ = read_plan(plan_file)
    for layer, row in zip(plan.layers, rows):
        assert all(0 <= e < E for e in row)
        assert placement(row, E, 4) == [sorted(layer.gpu[layer.expert == e].tolist()) for e in range(E)]


def test_window_recorded_by_the_policy_imports(cli, tmp_path):
    logical = folded(window_rows(3)).astype(np.int64)
    path = record_window(logical, MAP, str(tmp_path))
    result = cli("profile", "import", path, "--format", "vllm", "--out", tmp_path / "prof", "--json")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_profile(tmp_path / "prof").load, logical)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"expert_load_window": np.ones((2, LAYERS, P))}, "no 'physical_to_logical_map'"),
        ({"expert_load_window": np.ones((2, LAYERS, P)), "physical_to_logical_map": MAP[:, :8]},
         "expected [W, layers, P]"),
        ({"expert_load_window": np.zeros((2, LAYERS, P)), "physical_to_logical_map": MAP}, "the load window is empty"),
        ({"expert_load_window": np.ones((2, LAYERS, P)), "physical_to_logical_map": MAP - 1}, "negative expert ids"),
        ({"expert_load_window": np.ones((2, LAYERS, P)), "physical_to_logical_map": MAP,
          "expert_load_window_step": np.array(9)}, "outside the window"),
    ],
)
def test_bad_windows_are_one_line_errors(cli, tmp_path, arrays, message):
    path = tmp_path / "window.npz"
    np.savez(path, **arrays)
    result = cli("profile", "import", path, "--out", tmp_path / "prof")
    assert result.exit_code != 0 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert message in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "prof").exists()


def test_wrong_model_size_and_format_choice(cli, tmp_path):
    path = vllm_window(tmp_path / "w.npz", window_rows(), MAP)
    result = cli("profile", "import", path, "--num-experts", "4", "--out", tmp_path / "p")
    assert result.exit_code != 0 and "another model size" in result.stderr
    result = cli("profile", "import", path, "--format", "trt", "--out", tmp_path / "p")
    assert result.exit_code != 0 and "unknown --format 'trt'" in result.stderr
    result = cli("profile", "import", path, "--where", "a=b", "--out", tmp_path / "p")
    assert result.exit_code != 0 and "CSV rows only" in result.stderr
