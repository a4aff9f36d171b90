"""Workers: where expert replicas live and run. Local workers are devices or virtual CPU workers."""

from __future__ import annotations

import time
from typing import Any

from moeless_cli.errors import MoelessError
from moeless_cli.serving.experts import ExpertMath, HostStore


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


class Worker:
    """One expert-parallel rank: holds replicas (copies of expert weights) and runs them."""

    def __init__(self, index: int, device: str):
        import torch

        self.index = index  # rank, as the plan numbers GPUs
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise MoelessError(f"worker {index}: bad device {device!r} ({exc})") from None
        self.replicas: dict[tuple[int, int], dict[str, Any]] = {}  # (layer, expert) -> weights on device

    def load(self, store: HostStore, layer: int, expert: int) -> float:
        """Copy one expert's weights here from the host store; returns the copy's seconds."""
        start = time.perf_counter()
        self.replicas[(layer, expert)] = store.copy_to(layer, expert, self.device)
        _sync(self.device)
        return time.perf_counter() - start

    def drop(self, layer: int, expert: int) -> None:
        self.replicas.pop((layer, expert), None)

    def run(self, math: ExpertMath, layer: int, jobs: list[tuple[int, Any]]) -> tuple[list[Any], float]:
        """jobs: (expert, x [tokens, hidden] on this device). Returns outputs and the seconds spent."""
        start = time.perf_counter()
        outs = [math.forward(self.replicas[(layer, expert)], x) for expert, x in jobs]
        _sync(self.device)
        return outs, time.perf_counter() - start


def make_local_workers(num_workers: int, devices: list[str]) -> list[Worker]:
    """num_workers workers over the devices, round-robin (several may share one device)."""
    if num_workers < 1:
        raise MoelessError(f"--workers must be >= 1, got {num_workers}")
    if not devices:
        raise MoelessError("--devices: give at least one device (cpu, cuda:0, ...)")
    import torch

    for d in set(devices):
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise MoelessError(f"--devices {d}: CUDA is not available on this machine")
    return [Worker(i, devices[i % len(devices)]) for i in range(num_workers)]
