"""The predictor core on plain arrays: training, scoring, the predictor file and its refusal."""

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.predictor.gates import GateBank
from moeless_cli.predictor.pipeline import RoutingProfile, train_and_evaluate
from moeless_cli.predictor.samples import RoutingSamples
from moeless_cli.predictor.store import load_predictor, pack_predictors, save_predictor
from moeless_cli.predictor.train import TrainConfig

LAYERS, EXPERTS, HIDDEN, TOP_K = 4, 8, 16, 2
METRICS = {"topk_recall", "load_tvd", "pearson", "straggler_recall"}


def synthetic_profile(seed: int = 0) -> tuple[RoutingProfile, GateBank]:
    """A residual stream that drifts layer to layer, routed by random gates."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(LAYERS, EXPERTS, HIDDEN)).astype(np.float32)
    domains = rng.normal(size=(20, HIDDEN))
    inputs, requests, iterations = [], [], []
    for iteration in range(12):
        for request in rng.choice(20, 3, replace=False):
            x = rng.normal(size=(6, HIDDEN)) + domains[request]
            layers = [x]
            for _ in range(LAYERS - 1):
                layers.append(layers[-1] + 0.7 * rng.normal(size=x.shape))
            inputs.append(np.stack(layers, axis=1))
            requests += [request] * 6
            iterations += [iteration] * 6
    router_inputs = np.concatenate(inputs).astype(np.float16)  # [samples, layers, hidden]
    logits = np.einsum("slh,leh->sle", router_inputs.astype(np.float32), weight)
    topk = np.argsort(-logits, axis=-1)[..., :TOP_K]
    load = np.zeros((12, LAYERS, EXPERTS))
    for s, it in enumerate(iterations):
        for layer in range(LAYERS):
            load[it, layer, topk[s, layer]] += 1
    samples = RoutingSamples(router_inputs, topk, np.array(requests), np.array(iterations))
    return RoutingProfile(samples, load), GateBank(weight, None, None, "softmax", TOP_K)


@pytest.fixture(scope="module")
def trained():
    profile, gates = synthetic_profile()
    report, predictors = train_and_evaluate(profile, None, gates, [1, 2], TrainConfig(epochs=3, accuracy_threshold=1.0, calibration_steps=20))
    return profile, gates, report, predictors


def test_report_core_and_metric_ranges(trained):
    _, _, report, predictors = trained
    assert [(e["layer"], e["distance"]) for e in report["layers"]] == [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2)]
    assert len(predictors) == 5
    for entry in report["layers"]:
        assert entry["input_layer"] == entry["layer"] - entry["distance"]
        assert entry["paper_fine_tuned"] is True  # threshold 1.0: every layer is below it
        for method in ("moeless", "moeless-paper", "reused-gate", "ema", "last"):
            metrics = entry["methods"][method]
            assert METRICS <= set(metrics)
            assert 0.0 <= metrics["load_tvd"] <= 1.0 and -1.0 <= metrics["pearson"] <= 1.0
            assert 0.0 <= metrics["straggler_recall"] <= 1.0
        assert entry["methods"]["ema"]["topk_recall"] is None
        assert 0.0 <= entry["methods"]["moeless"]["topk_recall"] <= 1.0
    assert set(report["summary"]["moeless"]) == METRICS
    assert report["split"]["test_requests"] > 0 and report["split"]["fit_requests"] > 0


def test_layer_aware_paper_skips_layers_that_pass():
    profile, gates = synthetic_profile()
    report, predictors = train_and_evaluate(profile, None, gates, [1], TrainConfig(epochs=2, accuracy_threshold=0.0, calibration_steps=5))
    assert not any(e["paper_fine_tuned"] for e in report["layers"])
    for p in predictors:  # untouched copies of the target gates
        assert np.allclose(p.paper.weight, gates.weight[p.layer])


def test_predictor_file_round_trip_and_refusal(trained, tmp_path):
    profile, gates, report, predictors = trained
    header = {"model_id": "synthetic", "config_hash": "abc123", "distances": [1, 2]}
    manifest, tensors = pack_predictors(predictors, gates, header, report)
    path = save_predictor(tmp_path / "p.safetensors", manifest, tensors)
    predictor = load_predictor(path, expected_config_hash="abc123")
    assert predictor.distances == [1, 2] and predictor.layers(2) == [2, 3]
    hidden = profile.samples.router_inputs[:40, 0]  # [tokens, hidden] of layer 0
    counts = predictor.predict_layer_load(hidden, layer=1, distance=1)
    assert counts.shape == (EXPERTS,) and counts.sum() == pytest.approx(40 * TOP_K)
    paper = predictor.predict_layer_load(hidden, layer=1, distance=1, method="paper")
    assert paper.sum() == 40 * TOP_K
    predictor.observe_load(1, np.eye(EXPERTS)[0] * 80)
    assert not np.allclose(predictor.predict_layer_load(hidden, 1, 1), counts) or manifest["entries"][0]["blend_weight"] == 1.0
    assert predictor.predict_topk(hidden, 1, 1).shape == (40, TOP_K)
    with pytest.raises(MoelessError, match="trained for model synthetic"):
        load_predictor(path, expected_config_hash="other")
    with pytest.raises(MoelessError, match="no model for layer 0"):
        predictor.predict_layer_load(hidden, layer=0, distance=1)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MoelessError):
        load_predictor(tmp_path / "bad.safetensors")


def test_distance_out_of_range():
    profile, gates = synthetic_profile()
    with pytest.raises(MoelessError, match="distance 4"):
        train_and_evaluate(profile, None, gates, [4], TrainConfig(epochs=1, calibration_steps=5))


def test_routing_rule_with_correction_and_groups(tmp_path):
    """DeepSeek-V3 style gates: sigmoid scores, a selection bias and group-limited top-k."""
    import torch

    from moeless_cli.predictor.gates import select_topk

    profile, plain = synthetic_profile(seed=1)
    rng = np.random.default_rng(1)
    gates = GateBank(plain.weight, None, rng.uniform(0, 0.3, size=(LAYERS, EXPERTS)).astype(np.float32),
                     "sigmoid", TOP_K, num_groups=2, top_groups=1)
    x = torch.from_numpy(profile.samples.router_inputs.astype(np.float32))  # [samples, layers, hidden]
    routed = np.stack([
        select_topk(x[:, layer] @ torch.from_numpy(gates.weight[layer]).T, TOP_K, "sigmoid",
                    torch.from_numpy(gates.correction[layer]), 2, 1).numpy()
        for layer in range(LAYERS)
    ], axis=1)
    assert (routed // (EXPERTS // 2) == routed[:, :, :1] // (EXPERTS // 2)).all()  # one group per token
    samples = RoutingSamples(profile.samples.router_inputs, routed, profile.samples.request_ids,
                             profile.samples.iteration_ids)
    report, predictors = train_and_evaluate(RoutingProfile(samples, profile.load), None, gates, [1],
                                            TrainConfig(epochs=1, calibration_steps=5))
    for entry in report["layers"]:
        assert entry["methods"]["reused-gate"]["topk_recall"] > 0.3
    manifest, tensors = pack_predictors(predictors, gates, {"config_hash": "h", "model_id": "m"}, report)
    predictor = load_predictor(save_predictor(tmp_path / "p.safetensors", manifest, tensors))
    ids = predictor.predict_topk(samples.router_inputs[:20, 0], layer=1, distance=1)
    assert (ids // (EXPERTS // 2) == ids[:, :1] // (EXPERTS // 2)).all()
