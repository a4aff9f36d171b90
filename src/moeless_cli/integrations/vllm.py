"""moeless as vLLM's EPLB policy: vLLM asks it for a new expert map every `step_interval` steps.

`MoelessEplbPolicy` answers both interfaces vLLM has had (and imports without vLLM installed;
tensors in give CPU tensors out, numpy in gives numpy out):

- **Load-matrix interface** (vLLM `policy/default.py` at commit 02c1119c, the version INTEROP.md
  pins, and every vLLM whose `EPLB_POLICIES` classes take `old_global_expert_indices`):
  classmethod `rebalance_experts(weight [layers, E], num_replicas, num_groups, num_nodes,
  num_ranks, old_global_expert_indices=None)` returns `phy2log [layers, num_replicas]`. Older
  vLLM (the `policy/abstract.py` without `old_global_expert_indices`) expected the DeepSeek triple
  `(phy2log, log2phy, logcnt)`; `register()` detects that base class and the policy then returns
  the triple.
- **Context interface** (vLLM's newer EPLB code, not in the pinned version): one context object
  with `load_window_cpu [samples, layers, E]` (oldest first), `physical_to_logical_map_cpu
  [layers, P]`, `topology.num_groups / num_nodes / num_ranks` and `num_replicas`;
  `plan_rebalance(context[, policy_state])` returns a plan object holding
  `physical_to_logical_map [layers, P]` (vLLM's `EplbPlan` when importable). Versions that name
  the method `rebalance_experts(context, policy_state)` are answered too.

Rows are vLLM's: MoE layers of this pipeline stage only. The map comes from
`planning.slot_map.plan_slot_map` (equal split per replica, as vLLM dispatches; never less
balanced than the default policy; with the current map, GPUs relabelled and slots kept so that few
weights move).

Environment, read at each call in every vLLM worker:
    MOELESS_VLLM_EPLB=1          register() (a `vllm.general_plugins` entry point) makes this
                                 vLLM's "default" EPLB policy
    MOELESS_VLLM_PLAN=FILE       return this map (`moeless plan export --format vllm`) as is
    MOELESS_VLLM_RECORD_DIR=DIR  save each load window seen, as .npz (`moeless profile import` reads it)
    MOELESS_VLLM_MOVE_SLACK=X    accept X (relative) more imbalance for fewer weight moves
"""

from __future__ import annotations

import inspect
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError
from moeless_cli.interop.records import to_numpy
from moeless_cli.plan_io import logical_to_physical
from moeless_cli.planning.slot_map import SlotMapOptions, plan_slot_map

ENABLE_ENV = "MOELESS_VLLM_EPLB"


@dataclass
class VllmPolicyConfig:
    """What the policy does besides planning; `from_env` reads the MOELESS_VLLM_* variables."""

    plan_path: str | None = None  # a map file to return instead of planning (static placement)
    record_dir: str | None = None  # save each load window seen here (.npz, EP rank 0 only)
    options: SlotMapOptions = field(default_factory=SlotMapOptions)  # search and move trade-off

    @classmethod
    def from_env(cls, env: Any = None) -> "VllmPolicyConfig":
        env = os.environ if env is None else env
        slack = env.get("MOELESS_VLLM_MOVE_SLACK")
        try:
            options = SlotMapOptions(move_slack=float(slack)) if slack else SlotMapOptions()
        except ValueError:
            raise MoelessError(f"MOELESS_VLLM_MOVE_SLACK must be a number, got {slack!r}") from None
        return cls(env.get("MOELESS_VLLM_PLAN") or None, env.get("MOELESS_VLLM_RECORD_DIR") or None, options)


@dataclass(frozen=True)
class EplbPlan:
    """Stand-in for vLLM's `EplbPlan` where vLLM is not installed."""

    physical_to_logical_map: Any  # [layers, P] int64 CPU tensor (or numpy array)


def _numpy(x: Any) -> np.ndarray | None:
    """A torch tensor (any device, any dtype) or array-like as numpy; None stays None."""
    return None if x is None else to_numpy(x)


def _like(array: np.ndarray, template: Any) -> Any:
    """`array` as a CPU torch tensor when `template` is a tensor, else as numpy."""
    if hasattr(template, "detach"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array))
    return array


def _is_rank_zero() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def record_window(window: np.ndarray, old_map: np.ndarray | None, record_dir: str) -> Path | None:
    """Save a logical load window [samples, layers, E] and the map it was served with [layers, P]."""
    if not _is_rank_zero():
        return None
    from moeless_cli.fileio import write_bytes_atomic

    arrays = {"load_window_cpu": window}
    if old_map is not None:
        arrays["physical_to_logical_map"] = old_map
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes_atomic(Path(record_dir) / f"moeless-vllm-window-{time.time_ns()}.npz", buffer.getvalue())


def static_map(path: str, num_layers: int, num_replicas: int, num_experts: int) -> np.ndarray:
    """Read a `moeless plan export --format vllm` file and check it fits this model. Returns [layers, P]."""
    from moeless_cli.fileio import read_json

    doc = read_json(path, "vLLM map file")
    rows = doc.get("physical_to_logical_map") if isinstance(doc, dict) else None
    try:
        phy2log = np.asarray(rows, dtype=np.int64)
    except (TypeError, ValueError):
        raise MoelessError(f"{path}: physical_to_logical_map must be a [layers, P] list of integers") from None
    if phy2log.shape != (num_layers, num_replicas):
        raise MoelessError(f"{path}: physical_to_logical_map has shape {list(phy2log.shape)}, but vLLM runs "
                           f"[{num_layers}, {num_replicas}] (MoE layers x physical experts)")
    if phy2log.min() < 0 or phy2log.max() >= num_experts:
        raise MoelessError(f"{path}: expert ids must be in [0, {num_experts})")
    if any(np.unique(row).size != num_experts for row in phy2log):
        raise MoelessError(f"{path}: every expert must appear in every row")
    return phy2log


def plan_map(window: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_ranks: int,
             old_map: np.ndarray | None, config: VllmPolicyConfig) -> np.ndarray:
    """window: [samples, layers, E] logical loads; old_map: [layers, P]. Returns phy2log [layers, P]."""
    if window.ndim != 3:
        raise MoelessError(f"the load window must be [samples, layers, experts], got shape {list(window.shape)}")
    load = window.sum(axis=0)  # [layers, E]
    if config.record_dir:
        record_window(window, old_map, config.record_dir)
    if config.plan_path:
        return static_map(config.plan_path, load.shape[0], int(num_replicas), load.shape[1])
    result = plan_slot_map(load, int(num_replicas), int(num_ranks), int(num_groups), int(num_nodes), old_map,
                           config.options)
    return result.phy2log


def _is_context(obj: Any) -> bool:
    return hasattr(obj, "load_window_cpu") and hasattr(obj, "topology")


def _plan_type() -> type:
    try:
        from vllm.distributed.eplb.policy import EplbPlan as VllmPlan  # type: ignore[attr-defined]
    except ImportError:
        return EplbPlan
    return VllmPlan


class MoelessEplbPolicy:
    """vLLM EPLB policy backed by moeless's planner (see the module docstring for versions)."""

    config: VllmPolicyConfig | None = None  # None: read MOELESS_VLLM_* at each call
    returns_triple: bool = False  # set by register() for vLLM bases that expect (phy2log, log2phy, logcnt)

    @classmethod
    def _config(cls) -> VllmPolicyConfig:
        return cls.config if cls.config is not None else VllmPolicyConfig.from_env()

    @classmethod
    def rebalance_experts(cls, weight: Any, num_replicas: Any = None, num_groups: int = 1, num_nodes: int = 1,
                          num_ranks: int | None = None, old_global_expert_indices: Any = None) -> Any:
        """weight: [layers, E] loads; old_global_expert_indices: [layers, P] map now loaded.
        Returns phy2log [layers, num_replicas] (or the DeepSeek triple, see `returns_triple`)."""
        if _is_context(weight):  # the context interface under this name: (context, policy_state)
            return cls._plan_context(weight)
        if num_replicas is None or num_ranks is None:
            raise MoelessError("rebalance_experts needs num_replicas and num_ranks")
        load = _numpy(weight)
        if load is None or load.ndim != 2:
            raise MoelessError(f"weight must be [layers, experts], got shape {list(np.shape(load))}")
        phy2log = plan_map(load[None], num_replicas, num_groups, num_nodes, num_ranks,
                           _numpy(old_global_expert_indices), cls._config())
        if cls.returns_triple:
            log2phy, logcnt = logical_to_physical(phy2log, load.shape[1])
            return tuple(_like(a, weight) for a in (phy2log, log2phy, logcnt))
        return _like(phy2log, weight)

    def create_state(self, num_moe_layers: int) -> None:
        """Context interface: no per-model state (every plan is made from the window it is given)."""
        return None

    def plan_rebalance(self, context: Any, policy_state: Any = None) -> Any:
        """Context interface: a plan holding physical_to_logical_map [layers, P]."""
        return self._plan_context(context)

    def on_layer_committed(self, policy_state: Any, plan: Any, layer_idx: int) -> None:
        return None

    @classmethod
    def _plan_context(cls, context: Any) -> Any:
        window = _numpy(context.load_window_cpu)
        topology = context.topology
        phy2log = plan_map(window, context.num_replicas, topology.num_groups, topology.num_nodes,
                           topology.num_ranks, _numpy(context.physical_to_logical_map_cpu), cls._config())
        return _plan_type()(_like(phy2log, context.load_window_cpu))


def register() -> type | None:
    """vLLM plugin entry point (group `vllm.general_plugins`, run in every vLLM process).

    With MOELESS_VLLM_EPLB=1, vLLM's "default" EPLB policy becomes a subclass of vLLM's own
    AbstractEplbPolicy and MoelessEplbPolicy. Returns the class installed, or None."""
    if os.environ.get(ENABLE_ENV, "").lower() not in ("1", "true", "yes"):
        return None
    try:
        from vllm.distributed.eplb import policy as vllm_policy
    except ImportError:
        return None
    policies = getattr(vllm_policy, "EPLB_POLICIES", None)
    if policies is None:
        return None
    base = getattr(vllm_policy, "AbstractEplbPolicy", None)
    cls: type = MoelessEplbPolicy
    if base is not None:
        cls = type("MoelessEplbPolicy", (MoelessEplbPolicy, base), {})
        params = inspect.signature(base.rebalance_experts).parameters
        cls.returns_triple = "weight" in params and "old_global_expert_indices" not in params
    policies["default"] = cls
    return cls
