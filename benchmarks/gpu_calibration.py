"""Measure one GPU's figures for the simulator: expert GEMMs, host-to-device copies, dispatch decisions.

- SwiGLU expert (gate/up [H -> 2I], silu(gate) * up, down [I -> H]) in bf16 for 1, 2, 4, ..., 8192
  tokens, Mixtral-8x7B (H 4096, I 14336) and OLMoE (H 2048, I 1024). Each timed repeat runs the
  tokens through K distinct copies of the expert (>= 1 GiB of weights, far above L2) one after
  another, as a MoE layer does, and reports the time per expert, so small batches stream weights
  from HBM instead of L2.
- Host-to-device copy of one expert's bytes from pinned and from pageable memory (cold starts).
- Dispatch decision on the device: moeless's cost-aware split as the runtime runs it
  (`moeless_cli.serving.device_split`): routed ids -> counts per expert (a scatter-add) -> replica
  quotas (`device_quotas_torch`) -> each (token, slot) pair's replica (`pair_replica`) -> its GPU,
  with no host synchronisation, for (experts, GPUs, tokens).
CUDA events time the GPU (perf_counter on CPU); each figure is the median of repeats after warm-up.
Needs torch and numpy only (no moeless install: the decision is imported from this checkout's src/),
so it runs on a bare GPU box; `sim.hardware.
hardware_from_calibration` turns the JSON into a `Hardware`. Sized (by estimate: ~2.3 GB of expert
weights, 10 repeats per point) to take a minute or two on one H200, well inside the timeout:

  timeout 480 python3 benchmarks/gpu_calibration.py --out gpu_calibration.json
  python3 benchmarks/gpu_calibration.py --device cpu --quick --out /tmp/cal.json   # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # time this checkout's split, installed or not
from moeless_cli.planning.device_split import replica_table  # noqa: E402
from moeless_cli.serving.device_split import device_quotas_torch, pair_replica  # noqa: E402

MODELS = {"mixtral-8x7b": (4096, 14336), "olmoe-1b-7b": (2048, 1024)}  # name: (H, I)
QUICK_MODELS = {"tiny": (256, 512)}
DISPATCH_CASES = ((8, 8, 32, 2), (64, 8, 2048, 8), (256, 64, 8192, 8))  # experts, GPUs, tokens, top-k
DISPATCH_ENTRY_TOKENS = 143.0  # a replica's weight read in token-times (Mixtral-8x7B on an A6000); the
DISPATCH_TILE_TOKENS = 64  # decision's op sequence, hence its time, does not depend on these values


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() on `device`: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_sweep(hidden: int, inter: int, tokens: list[int], device: torch.device, args) -> list[dict]:
    """Seconds per expert of a SwiGLU expert over K weight copies, for each token count."""
    expert_bytes = 3 * hidden * inter * 2  # bf16
    copies = max(1, min(64, -(-args.stream_bytes // expert_bytes)))
    gate_up = [torch.randn(hidden, 2 * inter, device=device, dtype=torch.bfloat16) / hidden**0.5 for _ in range(copies)]
    down = [torch.randn(inter, hidden, device=device, dtype=torch.bfloat16) / inter**0.5 for _ in range(copies)]
    rows = []
    for t in tokens:
        x = torch.randn(t, hidden, device=device, dtype=torch.bfloat16)

        def run(x: torch.Tensor = x) -> None:
            for w1, w2 in zip(gate_up, down):
                gate, up = (x @ w1).chunk(2, dim=-1)
                (F.silu(gate) * up) @ w2

        seconds = median_seconds(run, device, args.warmup, args.repeats) / copies
        flops = 2 * t * 3 * hidden * inter
        rows.append({"tokens": t, "seconds": seconds, "tflops": flops / seconds / 1e12,
                     "weight_gbps": expert_bytes / seconds / 1e9})
    return rows


def h2d_copy(nbytes: int, device: torch.device, args) -> dict:
    """GB/s of one host-to-device copy of `nbytes` from pinned (CUDA only) and pageable memory."""
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    out = {"bytes": nbytes, "pinned_gbps": None}
    if device.type == "cuda":
        pinned = pageable.pin_memory()
        seconds = median_seconds(lambda: dst.copy_(pinned, non_blocking=True), device, 1, args.copy_repeats)
        out["pinned_gbps"] = nbytes / seconds / 1e9
    seconds = median_seconds(lambda: dst.copy_(pageable), device, 1, args.copy_repeats)
    out["pageable_gbps"] = nbytes / seconds / 1e9
    return out


def dispatch_decision(ids: torch.Tensor, table_gpu: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """ids: [N] routed expert of each (token, slot) pair; table_gpu: [E, K] GPU of each expert's
    replicas in preference order (-1: none). Returns [N] the GPU each pair goes to (moeless's split)."""
    counts = torch.zeros(table_gpu.shape[0], dtype=torch.int64, device=ids.device)
    counts.index_add_(0, ids, torch.ones_like(ids))  # bincount would read its length back to the host
    quotas = device_quotas_torch(counts, table_gpu, num_gpus, DISPATCH_ENTRY_TOKENS, DISPATCH_TILE_TOKENS)
    return table_gpu[ids, pair_replica(ids, quotas)]


def dispatch_case(experts: int, gpus: int, tokens: int, top_k: int, device: torch.device, args) -> dict:
    """Median seconds of one decision: Zipf routing, E + G - 1 replicas (the G - 1 hottest doubled)."""
    gen = torch.Generator().manual_seed(0)
    popularity = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64)
    ids = torch.multinomial(popularity.expand(tokens, -1), top_k, generator=gen).flatten()
    rep_expert = torch.cat([torch.arange(experts), torch.arange(gpus - 1)])
    rep_gpu = torch.arange(rep_expert.numel()) % gpus
    table = replica_table(rep_expert.numpy(), rep_gpu.numpy(), experts, gpus)  # host side, off the layer's path
    ids, table_gpu = ids.to(device), torch.from_numpy(table.gpu).to(device)
    gpu = dispatch_decision(ids, table_gpu, gpus)
    assert gpu.numel() == ids.numel() and int(gpu.max()) < gpus and int(gpu.min()) >= 0
    seconds = median_seconds(lambda: dispatch_decision(ids, table_gpu, gpus), device, args.warmup, 5 * args.repeats)
    return {"experts": experts, "gpus": gpus, "tokens": tokens, "top_k": top_k, "seconds": seconds,
            "decision": "device_split"}


def fit(gemm: dict[str, dict], copies: dict[str, dict]) -> dict:
    """Fitted constants: large-batch TFLOP/s, small-batch streaming GB/s, efficiency curve, H2D GB/s."""
    tflops = max(m["rows"][-1]["tflops"] for m in gemm.values())
    hbm = max(max(r["weight_gbps"] for r in m["rows"] if r["tokens"] <= 8) for m in gemm.values())
    curve = {name: {str(r["tokens"]): r["tflops"] / tflops for r in m["rows"]} for name, m in gemm.items()}
    largest = max(copies.values(), key=lambda c: c["bytes"])
    return {"tflops": tflops, "hbm_gbps": hbm, "gemm_efficiency": curve,
            "h2d_pinned_gbps": largest["pinned_gbps"], "h2d_pageable_gbps": largest["pageable_gbps"],
            "h2d_gbps": largest["pinned_gbps"] or largest["pageable_gbps"]}


def write_json_atomic(path: Path, doc: dict) -> None:
    """The stdlib's version of moeless_cli.fileio's: this script runs where moeless is not installed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    memory = torch.cuda.get_device_properties(device).total_memory / 1e9 if device.type == "cuda" else None
    return {"device": device.type, "device_name": name, "memory_gb": memory, "torch": torch.__version__,
            "cuda": torch.version.cuda, "dtype": "bfloat16", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def print_table(doc: dict) -> None:
    print(f"{doc['device_name']} (torch {doc['torch']}, CUDA {doc['cuda']})")
    print(f"{'expert':>14s} {'tokens':>6s} {'us/expert':>10s} {'TFLOP/s':>8s} {'weight GB/s':>11s}")
    for name, m in doc["gemm"].items():
        for r in m["rows"]:
            print(f"{name:>14s} {r['tokens']:6d} {r['seconds'] * 1e6:10.1f} {r['tflops']:8.3g} "
                  f"{r['weight_gbps']:11.4g}")
    for name, c in doc["h2d"].items():
        pinned = f"{c['pinned_gbps']:.1f}" if c["pinned_gbps"] else "n/a"
        print(f"H2D {name} ({c['bytes'] / 2**20:.1f} MiB): pinned {pinned} GB/s, "
              f"pageable {c['pageable_gbps']:.3g} GB/s")
    for d in doc["dispatch"]:
        print(f"dispatch {d['experts']} experts x {d['gpus']} GPUs, {d['tokens']} tokens: {d['seconds'] * 1e6:.1f} us")
    f = doc["fitted"]
    print(f"fitted: {f['tflops']:.4g} TFLOP/s large batch, {f['hbm_gbps']:.4g} GB/s streaming, "
          f"{f['h2d_gbps']:.3g} GB/s host copy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (atomically)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (CPU tests)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; use --device cpu --quick")
    models = QUICK_MODELS if args.quick else MODELS
    tokens = [2**i for i in range(5 if args.quick else 14)]
    args.warmup, args.repeats, args.copy_repeats = (1, 3, 2) if args.quick else (3, 10, 5)
    args.stream_bytes = 2**21 if args.quick else 2**30
    doc = environment(device)
    doc["gemm"] = {name: {"hidden": h, "intermediate": i, "expert_bytes": 6 * h * i,
                          "rows": gemm_sweep(h, i, tokens, device, args)} for name, (h, i) in models.items()}
    doc["h2d"] = {name: h2d_copy(m["expert_bytes"], device, args) for name, m in doc["gemm"].items()}
    doc["dispatch"] = [dispatch_case(*case, device, args) for case in DISPATCH_CASES]
    doc["fitted"] = fit(doc["gemm"], doc["h2d"])
    write_json_atomic(args.out, doc)
    print_table(doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
