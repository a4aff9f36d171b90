"""Plan files: round trip, validation errors naming the field, engine exports."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.plan_io import SCHEMA, export_plan, plan_to_dict, read_plan, validate_plan_dict, write_plan
from moeless_cli.planning import PlanningProblem, solve
from moeless_cli.planning.plan import LayerPlan, Plan


def small_plan() -> Plan:
    load = np.array([[50.0, 10, 10, 10], [5.0, 5, 30, 20]])
    return solve("ilp", load, PlanningProblem(num_gpus=2, time_limit_s=2)).plan


def test_round_trip_keeps_replicas_and_extra_keys(tmp_path):
    plan = small_plan()
    path = write_plan(tmp_path / "p.json", plan, {"solver": "ilp", "model_id": "m"})
    back, doc = read_plan(path)
    assert doc["schema"] == SCHEMA and doc["solver"] == "ilp" and doc["num_layers"] == 2
    for a, b in zip(plan.layers, back.layers):
        assert a.expert.tolist() == b.expert.tolist() and a.gpu.tolist() == b.gpu.tolist()
        assert np.allclose(a.share, b.share)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d.update(num_gpus=0), "num_gpus"),
        (lambda d: d["layers"].pop(), "layers"),
        (lambda d: d["layers"][1].update(layer=5), "layers[1].layer"),
        (lambda d: d["layers"][1]["replicas"][0].update(share=1.5), "layers[1].replicas[0].share"),
        (lambda d: d["layers"][0]["replicas"][1].update(gpu=9), "layers[0].replicas[1].gpu"),
        (lambda d: d["layers"][0]["replicas"][0].update(expert="x"), "layers[0].replicas[0].expert"),
        (lambda d: d["layers"][0]["replicas"].pop(0), "layers[0].replicas"),
    ],
)
def test_validation_names_the_field_at_fault(mutate, field):
    doc = orjson.loads(orjson.dumps(plan_to_dict(small_plan())))
    mutate(doc)
    with pytest.raises(MoelessError) as err:
        validate_plan_dict(doc, "p.json")
    assert field in str(err.value)


def test_share_sums_are_checked():
    doc = plan_to_dict(Plan(2, 2, [LayerPlan.from_lists([0, 0, 1], [0, 1, 1], [0.5, 0.4, 1.0])]))
    with pytest.raises(MoelessError, match="shares of expert 0 sum to 0.9"):
        validate_plan_dict(doc, "p.json")


def test_corrupt_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MoelessError, match="not valid JSON"):
        read_plan(bad)


def test_sglang_export_pads_gpu_blocks_to_equal_size():
    plan = Plan(2, 3, [LayerPlan.from_lists([0, 0, 1, 2], [0, 1, 1, 1], [0.7, 0.3, 1.0, 1.0])])
    doc, padded = export_plan(plan, "sglang", dense_layers=1)
    rows = doc["physical_to_logical_map"]
    assert list(doc) == ["physical_to_logical_map"]
    assert rows[0] == [0, 1, 2, 0, 1, 2]  # trivial row for the dense layer
    assert rows[1] == [0, 0, 0, 0, 1, 2] and padded == 2  # GPU 0 padded with its hottest expert
    ds, _ = export_plan(plan, "deepseek")
    assert ds["logcnt"] == [[4, 1, 1]] and ds["log2phy"][0][1] == [4, -1, -1, -1]
    with pytest.raises(MoelessError, match="unknown export format"):
        export_plan(plan, "onnx")


def test_sglang_export_places_moe_rows_at_their_decoder_layers():
    plan = Plan(2, 2, [LayerPlan.from_lists([0, 1], [0, 1], [1.0, 1.0])] * 2)
    doc, _ = export_plan(plan, "sglang", moe_layer_ids=[1, 3])
    assert doc["physical_to_logical_map"] == [[0, 1], [0, 1], [0, 1], [0, 1]]
    plan = Plan(2, 2, [LayerPlan.from_lists([1, 0], [0, 1], [1.0, 1.0])] * 2)
    rows = export_plan(plan, "sglang", moe_layer_ids=[1, 3])[0]["physical_to_logical_map"]
    assert rows == [[0, 1], [1, 0], [0, 1], [1, 0]]
