"""SGLang round trip through the CLI: recorder dumps -> profile -> plan -> --init-expert-location."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from engine_dumps import placement, plan_and_export, sglang_detail_dump, sglang_stat_dump
from moeless_cli.plan_io import read_plan
from moeless_cli.profiling import load_profile

E = 8  # routed experts
DECODER_LAYERS = 4  # row 0 is dense, as in a DeepSeek model with first_k_dense_replace = 1


def recorded_passes(num_passes: int = 6, seed: int = 0) -> np.ndarray:
    """[passes, decoder layers, E] counts; the dense row 0 stays zero."""
    rng = np.random.default_rng(seed)
    passes = np.zeros((num_passes, DECODER_LAYERS, E), dtype=np.int64)
    passes[:, 1:] = rng.integers(1, 60, (num_passes, DECODER_LAYERS - 1, E))
    passes[:, 1:, 3] *= 5  # a hot expert
    return passes


def test_stat_dump_to_plan_to_init_expert_location(cli, tmp_path):
    passes = recorded_passes()
    dump = sglang_stat_dump(tmp_path / "expert_distribution_recorder_1700000000.5.pt", passes, buffer=10)
    result = cli("profile", "import", dump, "--out", tmp_path / "prof", "--json")
    assert result.exit_code == 0, result.output
    info = orjson.loads(result.stdout)
    assert info["format"] == "sglang-stat" and info["dense_layers_dropped"] == [0] and info["engine_rows"] == 4
    assert info["iterations"] == 6 and info["layers"] == 3 and info["samples_in_file"] == 10
    assert [row["layer"] for row in info["per_layer"]] == [1, 2, 3]
    profile = load_profile(tmp_path / "prof")
    np.testing.assert_array_equal(profile.load, passes[:, 1:])  # one row per pass survives import
    assert profile.moe_layer_ids == [1, 2, 3] and profile.imported

    plan_file = tmp_path / "plan.json"
    summary = plan_and_export(cli, tmp_path / "prof", plan_file, 4, "sglang")
    doc = orjson.loads((tmp_path / "plan.sglang.json").read_bytes())
    assert list(doc) == ["physical_to_logical_map"]  # SGLang passes every key to init_by_mapping
    rows = doc["physical_to_logical_map"]
    P = summary["num_physical"]
    assert len(rows) == DECODER_LAYERS and P % 4 == 0 and summary["num_redundant_experts"] == P - E
    assert rows[0] == [p % E for p in range(P)]  # the dense layer keeps the trivial map
    plan, _ = read_plan(plan_file)
    for layer, row in zip(plan.layers, rows[1:]):  # SGLang's derivation gives back the plan's placement
        want = [sorted(layer.gpu[layer.expert == e].tolist()) for e in range(E)]
        assert placement(row, E, 4) == want


def test_logical_count_export_holds_the_recorded_loads(cli, tmp_path):
    passes = recorded_passes()
    dump = sglang_stat_dump(tmp_path / "dump.pt", passes)
    assert cli("profile", "import", dump, "--out", tmp_path / "prof", "--json").exit_code == 0
    plan_file = tmp_path / "plan.json"
    assert cli("plan", "--profile", tmp_path / "prof", "--gpus", "2", "--out", plan_file, "--json").exit_code == 0
    result = cli("plan", "export", plan_file, "--format", "sglang-logical-count", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["loads_match_plan"] is True
    doc = orjson.loads((tmp_path / "plan.sglang-logical-count.json").read_bytes())
    assert list(doc) == ["logical_count"]
    np.testing.assert_array_equal(np.array(doc["logical_count"]), passes.sum(axis=0))  # dense row: zeros
    # and it reads back as an SGLang Form B file
    result = cli("profile", "import", tmp_path / "plan.sglang-logical-count.json", "--out", tmp_path / "back", "--json")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(load_profile(tmp_path / "back").load[0], passes.sum(axis=0)[1:])


def test_per_pass_rank_files_are_summed_and_folded_to_logical(cli, tmp_path):
    # 2 ranks, P = 12 slots (4 redundant): slot p -> logical map, physical counts in each rank's own block
    phy2log = np.tile(np.array([0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 0, 1]), (DECODER_LAYERS, 1))
    rng = np.random.default_rng(1)
    physical = rng.integers(0, 30, (3, DECODER_LAYERS, 12))
    physical[:, 0] = 0
    files = []
    for rank in range(2):
        own = np.zeros_like(physical)
        own[..., rank * 6:(rank + 1) * 6] = physical[..., rank * 6:(rank + 1) * 6]
        records = [{"forward_pass_id": 10 + i, "rank": rank, "gatherer_key": "primary",
                    "global_physical_count": torch.from_numpy(own[i])} for i in range(3)]
        name = f"expert_distribution_recorder_1.{rank}_{rank}.pt"
        files.append(sglang_detail_dump(tmp_path / name, records, phy2log))
    result = cli("profile", "import", *files, "--out", tmp_path / "prof", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["format"] == "sglang-per-pass"
    want = np.zeros((3, DECODER_LAYERS, E))
    for p, e in enumerate(phy2log[0]):
        want[..., e] += physical[..., p]
    np.testing.assert_array_equal(load_profile(tmp_path / "prof").load, want[:, 1:])


def token_record(pass_id: int, rank: int, physical_ids: np.ndarray, mode: int, seq_lens: list[int] | None) -> dict:
    """A per_token record: topk_ids_of_layer [layers, tokens, 8] physical ids, -1 unused."""
    tokens = physical_ids.shape[1]
    return {"forward_pass_id": pass_id, "rank": rank, "gatherer_key": "primary",
            "input_ids": list(range(100, 100 + tokens)), "positions": list(range(tokens)),
            "extend_seq_lens": seq_lens, "forward_mode": mode, "misc_objects": [],
            "topk_ids_of_layer": torch.from_numpy(physical_ids.astype(np.int32)),
            "global_physical_count": torch.zeros(physical_ids.shape[0], 8, dtype=torch.int32)}


def test_per_token_dump_keeps_routing_drops_padding_and_duplicates(cli, tmp_path):
    phy2log = np.tile(np.arange(8)[::-1], (DECODER_LAYERS, 1))  # slot p holds expert 7 - p
    rng = np.random.default_rng(2)
    ids = np.full((DECODER_LAYERS, 5, 8), -1)
    ids[1:, :, :2] = rng.integers(0, 8, (DECODER_LAYERS - 1, 5, 2))  # top-2 model, dense layer 0
    ids[2, 4, 1] = -1  # one token with a missing choice: dropped
    prefill = token_record(0, 0, ids, mode=1, seq_lens=[3, 2])
    decode = token_record(1, 0, ids[:, :2], mode=2, seq_lens=None)
    files = [sglang_detail_dump(tmp_path / f"r{rank}.pt", [prefill, decode], phy2log) for rank in range(2)]
    result = cli("profile", "import", *files, "--out", tmp_path / "prof", "--json")
    assert result.exit_code == 0, result.output
    info = orjson.loads(result.stdout)
    assert info["format"] == "sglang-per-token" and info["top_k"] == 2 and info["tokens"] == 6
    assert any("dropped 1 token" in note for note in info["notes"])
    profile = load_profile(tmp_path / "prof")
    kept = [0, 1, 2, 3, 0, 1]  # the identical rank-1 records count once
    want = 7 - np.concatenate([ids[1:, :4], ids[1:, :2]], axis=1)[:, :, :2].transpose(1, 0, 2)
    np.testing.assert_array_equal(profile.topk_ids, want)
    assert profile.token_phase.tolist() == [0, 0, 0, 0, 1, 1]
    assert profile.token_iteration.tolist() == [0, 0, 0, 0, 1, 1]
    assert profile.token_request.tolist()[:4] == [0, 0, 0, 1]  # prefill sequences of 3 and 2 tokens
    assert profile.token_position.tolist() == kept
    assert profile.iteration_phase.tolist() == [0, 1]
    assert profile.load.sum() == 6 * 3 * 2  # tokens x MoE layers x top-k
    plan = tmp_path / "plan.json"
    result = cli("plan", "--profile", tmp_path / "prof", "--gpus", "2", "--spares", "--out", plan, "--json")
    assert result.exit_code == 0, result.output  # per-token routing feeds --spares


@pytest.mark.parametrize(
    "record, message",
    [
        ({"logical_count": torch.zeros(4, 3, 8, dtype=torch.int32)}, "the buffer is empty"),
        ({"logical_count": torch.ones(8)}, "logical_count must be a numeric [passes, layers, experts] array"),
        ({"logical_count": -torch.ones(2, 3, 8)}, "non-negative"),
        ({"something": 1}, "not an SGLang dump"),
        ("not a dict", "expected a dict"),
    ],
)
def test_bad_dumps_are_one_line_errors(cli, tmp_path, record, message):
    dump = tmp_path / "bad.pt"
    torch.save(record, dump)
    result = cli("profile", "import", dump, "--out", tmp_path / "prof", "--json")
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert message in result.stderr and str(dump) in result.stderr
    assert not (tmp_path / "prof").exists()


def test_unreadable_mismatched_and_wrong_size_inputs(cli, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip or a pickle")
    result = cli("profile", "import", garbage, "--out", tmp_path / "p")
    assert result.exit_code != 0 and "not a readable torch file" in result.stderr and str(garbage) in result.stderr

    dump = sglang_stat_dump(tmp_path / "dump.pt", recorded_passes())
    result = cli("profile", "import", dump, "--num-experts", "16", "--out", tmp_path / "p")
    assert result.exit_code != 0 and "another model size" in result.stderr

    small = np.zeros((DECODER_LAYERS, 8), dtype=np.int64)
    big = np.zeros((DECODER_LAYERS, 12), dtype=np.int64)
    record = [{"forward_pass_id": 0, "global_physical_count": torch.ones(DECODER_LAYERS, 8, dtype=torch.int32)}]
    a = sglang_detail_dump(tmp_path / "a.pt", record, small)
    b = sglang_detail_dump(tmp_path / "b.pt", record, big)
    result = cli("profile", "import", a, b, "--out", tmp_path / "p")
    assert result.exit_code != 0 and "different runs or model sizes" in result.stderr and "b.pt" in result.stderr

    # a plan and a profile of another model size do not export together
    assert cli("profile", "import", dump, "--out", tmp_path / "prof").exit_code == 0
    other = sglang_stat_dump(tmp_path / "other.pt", np.ones((2, 3, 16), dtype=np.int64))
    assert cli("profile", "import", other, "--out", tmp_path / "other").exit_code == 0
    plan = tmp_path / "plan.json"
    assert cli("plan", "--profile", tmp_path / "prof", "--gpus", "2", "--out", plan).exit_code == 0
    result = cli("plan", "export", plan, "--format", "sglang-logical-count", "--profile", tmp_path / "other")
    assert result.exit_code != 0 and "another model size" in result.stderr and result.stderr.count("\n") == 1
