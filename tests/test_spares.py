"""Spare replicas: filling a plan's unused budget where single batches straggle."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from tiny_models import cached_tiny_checkpoint

from moeless_cli.planning import PlanningProblem, solve
from moeless_cli.planning.spares import fill_spares, sample_token_batches, straggle


def _batches(num_experts: int, top_k: int, seed: int = 0) -> np.ndarray:
    """[batches, experts]: one-token decode steps and 200-token chunks, routed by a skewed popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_experts + 1)
    out = []
    for size in [1] * 20 + [200] * 20:
        load = np.zeros(num_experts)
        for _ in range(size):
            load[rng.choice(num_experts, top_k, replace=False, p=weights / weights.sum())] += 1
        out.append(load)
    return np.array(out)


def test_spares_lower_the_straggle_within_slots_and_budget():
    E, G, slots, budget = 8, 8, 3, 20  # Mixtral-like: the ilp needs E + G - 1 = 15 for the mean load
    batches = _batches(E, 2)
    base = solve("ilp", batches.sum(axis=0)[None, :], PlanningProblem(num_gpus=G, slots_per_gpu=slots,
                                                                      replica_budget=budget, time_limit_s=5)).plan.layers[0]
    filled = fill_spares(base, batches, G, slots, budget)
    assert filled.num_replicas > base.num_replicas and filled.num_replicas <= budget
    assert filled.slots_used(G).max() <= slots
    assert len(set(zip(filled.expert.tolist(), filled.gpu.tolist()))) == filled.num_replicas  # no duplicates
    assert np.array_equal(filled.share[:base.num_replicas], base.share) and (filled.share[base.num_replicas:] == 0).all()
    before, after = straggle(base.expert, base.gpu, batches, G), straggle(filled.expert, filled.gpu, batches, G)
    assert after < before and after >= 1.0


def test_no_room_means_no_spares():
    batches = _batches(8, 2)
    base = solve("static", batches.sum(axis=0)[None, :], PlanningProblem(num_gpus=4, slots_per_gpu=2)).plan.layers[0]
    assert fill_spares(base, batches, 4, 2, 16).num_replicas == 8  # every slot is taken


def test_sample_token_batches_counts_whole_tokens():
    rng = np.random.default_rng(0)
    tokens, layers, k, E = 300, 3, 2, 8
    topk = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(layers)]) for _ in range(tokens)])
    request = np.repeat(np.arange(10), 30)
    phase = np.tile(np.r_[np.zeros(24), np.ones(6)], 10).astype(np.uint8)
    batches = sample_token_batches(topk, request, phase, E, count=20)
    assert batches.shape == (20, layers, E)
    sizes = batches.sum(axis=2) / k  # tokens per batch, the same in every layer
    assert np.allclose(sizes, sizes[:, :1]) and set(np.unique(sizes[::2, 0])) <= {1, 2, 4, 8}
    assert (sizes[1::2, 0] <= 24).all()  # a prefill chunk stays inside one prompt


@pytest.fixture(scope="module")
def routed_profile(tmp_path_factory):
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    root = tmp_path_factory.mktemp("spares")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"item {i}: " + "pack the experts well " * (1 + i % 3)}) + "\n"
                               for i in range(8)))
    args = ["profile", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", prompts, "--num-prompts", "8",
            "--batch-size", "4", "--max-new-tokens", "3", "--max-prompt-tokens", "32", "--out", root / "profile", "--json"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "profile"


def test_plan_spares_cli(cli, routed_profile, tmp_path):
    out = tmp_path / "plan.json"
    result = cli("plan", "--profile", routed_profile, "--gpus", "4", "--slots-per-gpu", "4", "--spares",
                 "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for row in doc["layers"]:
        assert row["batch_straggle_after_spares"] <= row["batch_straggle_before_spares"]
        assert row["replicas"] <= 16
    assert orjson.loads(out.read_bytes())["spares"] is True
    csv = tmp_path / "loads.csv"
    csv.write_text("layer,expert,count\n0,0,5\n0,1,3\n")
    result = cli("plan", "--loads", csv, "--gpus", "2", "--spares", "--json")
    assert result.exit_code != 0 and "per-token routing" in result.stderr and result.stderr.count("\n") == 1
