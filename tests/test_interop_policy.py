"""moeless as vLLM's EPLB policy, without vLLM: output invariants, DeepSeek's golden case, balance
against the default algorithm on the real OLMoE counts (under vLLM's even split), both interfaces."""

from __future__ import annotations

import sys
import types
from abc import ABC, abstractmethod
from importlib import resources
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import torch

from moeless_cli.errors import MoelessError
from moeless_cli.integrations import vllm as integration
from moeless_cli.integrations.vllm import MoelessEplbPolicy, VllmPolicyConfig
from moeless_cli.loads_csv import read_loads_csv
from moeless_cli.planning.slot_map import balancedness, moved_replicas, slot_gpu_loads
from moeless_cli.planning.solvers.eplb import rebalance_experts

OLMOE = resources.files("moeless_cli") / "data/loads/olmoe-1b-7b/olmoe_expert_counts.csv"
# DeepSeek EPLB README example (INTEROP.md section 4): 2 layers, 12 experts, 16 slots, 4 groups, 2 nodes, 8 GPUs.
README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
README_GPU_LOADS = [[121.5, 86.5, 125, 113, 147.5, 131.5, 156, 152],
                    [173, 179.5, 120.5, 172, 123, 152, 118.5, 117.5]]


@pytest.fixture(autouse=True)
def no_env_config(monkeypatch):
    for name in ("MOELESS_VLLM_PLAN", "MOELESS_VLLM_RECORD_DIR", "MOELESS_VLLM_MOVE_SLACK", "MOELESS_VLLM_EPLB"):
        monkeypatch.delenv(name, raising=False)


def check_map(phy2log: np.ndarray, layers: int, experts: int, slots: int, ranks: int) -> None:
    assert phy2log.shape == (layers, slots) and slots % ranks == 0 and phy2log.dtype == np.int64
    assert phy2log.min() >= 0 and phy2log.max() < experts
    assert all(np.unique(row).size == experts for row in phy2log)  # every expert at least once per layer


def test_readme_golden_case_format_and_balance():
    weight = torch.tensor(README_WEIGHT)
    default, _, _ = rebalance_experts(np.array(README_WEIGHT), 16, 4, 2, 8)
    for row, w, want in zip(default, README_WEIGHT, README_GPU_LOADS):  # the rule reproduces INTEROP.md's loads
        np.testing.assert_allclose(slot_gpu_loads(row, np.array(w, float), 8), want)
    out = MoelessEplbPolicy.rebalance_experts(weight, 16, 4, 2, 8)
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.dtype == torch.int64
    check_map(out.numpy(), 2, 12, 16, 8)
    peaks = [slot_gpu_loads(row, np.array(w, float), 8).max() for row, w in zip(out.numpy(), README_WEIGHT)]
    assert peaks[0] <= 156 and peaks[1] <= 179.5
    nodes = [set(row[:8].tolist()) for row in out.numpy()]  # groups stay on the nodes the default chose
    assert nodes == [set(row[:8].tolist()) for row in default]


@pytest.mark.parametrize("seed, layers, experts, slots, ranks, groups, nodes", [
    (0, 3, 16, 16, 4, 1, 1), (1, 2, 16, 24, 8, 4, 2), (2, 4, 12, 18, 6, 1, 1), (3, 1, 8, 64, 8, 1, 1),
    (4, 2, 10, 12, 4, 3, 2),  # 3 groups on 2 nodes: vLLM's global fallback
])
def test_output_invariants_numpy_in_numpy_out(seed, layers, experts, slots, ranks, groups, nodes):
    rng = np.random.default_rng(seed)
    weight = rng.zipf(1.5, (layers, experts)).astype(np.int64)
    weight[0, 0] = 0  # an expert nobody routed to keeps a slot
    out = MoelessEplbPolicy.rebalance_experts(weight, slots, groups, nodes, ranks)
    assert isinstance(out, np.ndarray)
    check_map(out, layers, experts, slots, ranks)
    default, _, _ = rebalance_experts(weight, slots, groups if groups % nodes == 0 else 1,
                                      nodes if groups % nodes == 0 else 1, ranks)
    for row, old, w in zip(out, default, weight.astype(float)):
        assert slot_gpu_loads(row, w, ranks).max() <= slot_gpu_loads(old, w, ranks).max() * (1 + 1e-12)


@pytest.mark.parametrize("corpus", ["prose", "code", "math"])
def test_never_less_balanced_than_default_on_olmoe(corpus):
    load = read_loads_csv(OLMOE, {"corpus": corpus, "shape": "4x512"})  # [16 layers, 64 experts]
    for ranks, redundant in [(8, 0), (8, 16), (16, 16), (32, 32)]:
        slots = 64 + redundant
        default, _, _ = rebalance_experts(load, slots, 1, 1, ranks)
        ours = MoelessEplbPolicy.rebalance_experts(torch.from_numpy(load), slots, 1, 1, ranks).numpy()
        check_map(ours, 16, 64, slots, ranks)
        for row, old, w in zip(ours, default, load):  # vLLM's dispatch: even split over an expert's slots
            assert slot_gpu_loads(row, w, ranks).max() <= slot_gpu_loads(old, w, ranks).max() * (1 + 1e-12)
        assert balancedness(ours, load, ranks) >= balancedness(default, load, ranks)
    assert balancedness(ours, load, 32) > balancedness(default, load, 32) + 0.01  # and clearly better at 32 ranks


def test_old_map_keeps_experts_in_their_slots():
    load = read_loads_csv(OLMOE, {"corpus": "code", "shape": "1x512"})
    first = MoelessEplbPolicy.rebalance_experts(load, 80, 1, 1, 8)
    again = MoelessEplbPolicy.rebalance_experts(load, 80, 1, 1, 8, first)
    np.testing.assert_array_equal(again, first)  # same loads: nothing moves
    drifted = load * np.random.default_rng(0).uniform(0.9, 1.1, load.shape)
    new = MoelessEplbPolicy.rebalance_experts(drifted, 80, 1, 1, 8, first)
    check_map(new, 16, 64, 80, 8)
    for row, old in zip(new, first):
        kept = sum(10 - len(_minus(row[g * 10:(g + 1) * 10], old[g * 10:(g + 1) * 10])) for g in range(8))
        assert int((row == old).sum()) == kept  # every replica still on its GPU sits in its old slot
    moved = sum(moved_replicas(r, o, 8) for r, o in zip(new, first))
    fresh = MoelessEplbPolicy.rebalance_experts(drifted, 80, 1, 1, 8)
    assert moved < sum(moved_replicas(r, o, 8) for r, o in zip(fresh, first))


def _minus(a: np.ndarray, b: np.ndarray) -> list[int]:
    rest = b.tolist()
    out = []
    for e in a.tolist():
        if e in rest:
            rest.remove(e)
        else:
            out.append(e)
    return out


def context(window: torch.Tensor, old: torch.Tensor, ranks: int, replicas: int) -> SimpleNamespace:
    topology = SimpleNamespace(num_groups=1, num_nodes=1, num_ranks=ranks)
    return SimpleNamespace(load_window_cpu=window, physical_to_logical_map_cpu=old, topology=topology,
                           num_replicas=replicas, cpu_group=None)


def test_context_interface_sums_the_window():
    window = torch.randint(0, 50, (4, 3, 8))
    old = torch.arange(12).remainder(8).repeat(3, 1)
    ctx = context(window, old, 4, 12)
    plan = MoelessEplbPolicy().plan_rebalance(ctx, None)
    assert isinstance(plan.physical_to_logical_map, torch.Tensor)
    check_map(plan.physical_to_logical_map.numpy(), 3, 8, 12, 4)
    legacy = MoelessEplbPolicy.rebalance_experts(window.sum(0), 12, 1, 1, 4, old)
    assert torch.equal(plan.physical_to_logical_map, legacy)
    assert torch.equal(MoelessEplbPolicy().rebalance_experts(ctx, None).physical_to_logical_map, legacy)


@pytest.mark.parametrize("args, message", [
    ((np.ones((2, 8)), 12, 1, 1, 5), "do not split evenly over 5 ranks"),
    ((np.ones((2, 8)), 6, 1, 1, 2), "cannot hold 8 experts"),
    ((np.ones((2, 8)), 12, 1, 1, 4, np.zeros((2, 8), dtype=np.int64)), "expected [2, 12]"),
    ((np.ones((2, 8)), 12, 1, 1, 4, np.full((2, 12), 9)), "outside [0, 8)"),
    ((np.ones(8), 12, 1, 1, 4), "weight must be [layers, experts]"),
])
def test_bad_calls_raise_moeless_errors(args, message):
    with pytest.raises(MoelessError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        MoelessEplbPolicy.rebalance_experts(*args)


def test_static_plan_file_and_recording(tmp_path, monkeypatch):
    phy2log = np.tile(np.array([3, 2, 1, 0, 0, 1, 2, 3]), (2, 1))
    plan = tmp_path / "plan.vllm.json"
    plan.write_bytes(orjson.dumps({"physical_to_logical_map": phy2log.tolist()}))
    monkeypatch.setenv("MOELESS_VLLM_PLAN", str(plan))
    monkeypatch.setenv("MOELESS_VLLM_RECORD_DIR", str(tmp_path / "rec"))
    out = MoelessEplbPolicy.rebalance_experts(torch.ones(2, 4), 8, 1, 1, 2)
    assert out.tolist() == phy2log.tolist()
    saved = list((tmp_path / "rec").glob("*.npz"))
    assert len(saved) == 1 and np.load(saved[0])["load_window_cpu"].shape == (1, 2, 4)
    with pytest.raises(MoelessError, match="shape"):
        MoelessEplbPolicy.rebalance_experts(torch.ones(3, 4), 8, 1, 1, 2)
    assert VllmPolicyConfig.from_env({"MOELESS_VLLM_MOVE_SLACK": "0.01"}).options.move_slack == 0.01


def fake_vllm(monkeypatch, base: type) -> dict:
    """vllm.distributed.eplb.policy with EPLB_POLICIES and the given AbstractEplbPolicy."""
    policies: dict = {"default": object}
    module = types.ModuleType("vllm.distributed.eplb.policy")
    module.EPLB_POLICIES, module.AbstractEplbPolicy = policies, base
    for name in ("vllm", "vllm.distributed", "vllm.distributed.eplb"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.distributed.eplb.policy", module)
    sys.modules["vllm.distributed.eplb"].policy = module
    return policies


def test_register_installs_the_policy_only_when_asked(monkeypatch):
    class PinnedBase(ABC):  # vLLM 02c1119c: one tensor back
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                              old_global_expert_indices=None): ...

    class TripleBase(ABC):  # older vLLM: (phy2log, log2phy, logcnt)
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks): ...

    policies = fake_vllm(monkeypatch, PinnedBase)
    assert integration.register() is None and policies["default"] is object  # not asked
    monkeypatch.setenv("MOELESS_VLLM_EPLB", "1")
    installed = integration.register()
    assert policies["default"] is installed and issubclass(installed, PinnedBase) and not installed.returns_triple
    assert isinstance(installed.rebalance_experts(torch.ones(2, 8), 8, 1, 1, 2), torch.Tensor)
    installed()  # no abstract method left

    policies = fake_vllm(monkeypatch, TripleBase)
    installed = integration.register()
    phy2log, log2phy, logcnt = installed.rebalance_experts(torch.ones(2, 8), 12, 1, 1, 4)
    assert logcnt.sum(dim=1).tolist() == [12, 12] and log2phy.shape[:2] == (2, 8)
    for layer in range(2):
        for e in range(8):
            slots = [p for p in log2phy[layer, e].tolist() if p >= 0]
            assert len(slots) == logcnt[layer, e] and all(phy2log[layer, p] == e for p in slots)


def test_even_split_solver_beats_eplb_and_keeps_a_previous_plan():
    from moeless_cli.planning import PlanningProblem, solve

    load = read_loads_csv(OLMOE, {"corpus": "math", "shape": "1x2048"})
    problem = PlanningProblem(num_gpus=16, slots_per_gpu=5, time_limit_s=10)
    eplb, even = solve("eplb", load, problem), solve("even-split", load, problem)
    for a, b in zip(eplb.infos, even.infos):
        assert b.max_load <= a.max_load * (1 + 1e-12)
    for layer in even.plan.layers:  # equal shares over all 80 slots, 5 per GPU
        counts = layer.replica_counts(64)
        assert layer.num_replicas == 80 and np.allclose(layer.share, 1.0 / counts[layer.expert])
        assert layer.slots_used(16).tolist() == [5] * 16
    again = solve("even-split", load, PlanningProblem(num_gpus=16, slots_per_gpu=5, previous=even.plan))
    for a, b in zip(even.plan.layers, again.plan.layers):  # same loads, previous plan: nothing moves
        assert a.expert.tolist() == b.expert.tolist() and a.gpu.tolist() == b.gpu.tolist()
