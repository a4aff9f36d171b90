"""Dispatch-time re-balancing: water-filling, moeless's whole-token split and the exact LP, side by side.

For Zipf loads over E experts on G GPUs with the replicas of an ilp plan, prints the busiest GPU's
load of static EP, equal split over the plan (the paper's step 4), water-filling (fractional),
`balanced_split` (whole tokens: water-filling rounded, then augmenting paths) and the whole-token
optimum ceil(LP) (CBC), plus each split's time per layer (target: well under 1 ms at 64 experts x
8 GPUs). Two batch sizes: prefill-like (~512 tokens per GPU) and decode-like (4 tokens in all),
where rounding matters most.

Second table: the per-layer decision on the device (`planning/device_split.py`, its torch twin
`serving/device_split.py`) against the host `balanced_split`, for the issue's three cases (8
experts x 8 GPUs x 32 tokens top-2, 64 x 8 x 2,048 and 256 x 64 x 8,192 top-8; Zipf popularity,
batch loads drifting from it, an eplb plan with E + max(E/4, G) replicas). Per case: the decision time on
this CPU (median of many calls) of the host split, the numpy twin and the torch twin (counts ->
quotas -> each pair's replica), the torch twin's aten op count, and the busiest GPU's cost under
the physical time model (a replica serving t > 0 tokens costs max(entry, tile * ceil(t / tile)),
entry = one expert's weight read in token-times, from the preset and hardware named) for static EP
(expert e on GPU e mod G, whole), the host split and the device split, each over the lower bound
max(sum_e cost(n_e) / G, fractional LP over the plan's replicas): an upper bound of its ratio to
the optimum. With CUDA, the torch twin is also timed there (CUDA events).

Third (`--fused`, a few minutes: compiles): the kernels torch.compile (inductor) generates for the
whole decision (scatter-add counts -> quotas -> each pair's replica) per number of refinement passes,
on this machine's inductor (C++ kernels; Triton on a GPU fuses alike). The simulator charges a
balanced decision `online/device_dispatch.BALANCED_KERNELS` kernels at `Hardware.kernel_s` each.

  .venv/bin/python benchmarks/bench_dispatch.py            # the first two tables
  .venv/bin/python benchmarks/bench_dispatch.py --device   # the second only
  .venv/bin/python benchmarks/bench_dispatch.py --fused    # the third only
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

DEVICE_CASES = ((8, 8, 32, 2), (64, 8, 2048, 8), (256, 64, 8192, 8))  # experts, GPUs, tokens, top-k
COST_SETTINGS = (("mixtral-8x7b", "a6000"), ("olmoe-1b-7b", "h100"))  # (preset, hardware) for the entry cost


def _batch_load(rng: np.random.Generator, popularity: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """Whole token-to-expert counts: [experts] for `tokens` tokens routed top-k by popularity."""
    weights = popularity / popularity.sum()
    load = np.zeros(popularity.size)
    for _ in range(tokens):
        load[rng.choice(popularity.size, top_k, replace=False, p=weights)] += 1
    return load


def _zipf_pairs(rng: np.random.Generator, popularity: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """[tokens * top_k] expert of every (token, slot) pair, top-k distinct experts per token by popularity
    (Gumbel top-k: sampling without replacement, vectorized)."""
    keys = np.log(popularity / popularity.sum())[None, :] - np.log(-np.log(rng.random((tokens, popularity.size))))
    return np.argsort(-keys, axis=1)[:, :top_k].reshape(-1)


def _entry_tokens(preset_name: str, hardware_name: str) -> tuple[float, int]:
    """(one expert's weight read in token-times of its GEMM, GEMM row tile) for a preset on a GPU."""
    from moeless_cli.sim.hardware import get_hardware
    from moeless_cli.sim.presets import PRESETS

    preset, hardware = PRESETS[preset_name], get_hardware(hardware_name)
    weight_s = preset.expert_bytes / (hardware.hbm_gbps * 1e9)
    token_s = preset.expert_flops_per_token / (hardware.tflops * 1e12)
    return weight_s / token_s, hardware.gemm_tile_tokens


def _physical_peak(gpu: np.ndarray, tokens: np.ndarray, num_gpus: int, entry: float, tile: int) -> float:
    """gpu, tokens: [replicas] whole tokens. Busiest GPU's cost in token-times under the physical model."""
    cost = np.where(tokens > 0, np.maximum(entry, tile * np.ceil(tokens / tile)), 0.0)
    return float(np.bincount(gpu, weights=cost, minlength=num_gpus).max())


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _cuda_ms(fn, repeats: int) -> float | None:
    """Median ms of fn() on the GPU (CUDA events), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def count_aten_ops(fn) -> int:
    """aten operations fn() dispatches, views excepted (as `DECISION_KERNELS` counts them): at most
    one kernel launch each."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            _Count.ops += not func.is_view
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return _Count.ops


def _device_case(num_experts: int, num_gpus: int, tokens: int, top_k: int, entry: float, tile: int,
                 trials: int, repeats: int) -> dict:
    """One row of the device table: mean quality ratios over `trials` batches, median times."""
    import torch

    from moeless_cli.planning import PlanningProblem, solve
    from moeless_cli.planning.device_split import device_quotas, quotas_to_replicas, replica_table
    from moeless_cli.planning.dispatch import balanced_split, lp_min_peak
    from moeless_cli.serving.device_split import device_quotas_torch, pair_replica

    rng = np.random.default_rng(0)
    popularity = rng.permutation(1.0 / np.arange(1, num_experts + 1))
    budget = num_experts + max(num_experts // 4, num_gpus)  # eplb replicates in whole rounds of G
    problem = PlanningProblem(num_gpus=num_gpus, slots_per_gpu=-(-budget // num_gpus), replica_budget=budget)
    plan = solve("eplb", popularity[None, :] * tokens * top_k, problem).plan.layers[0]
    table = replica_table(plan.expert, plan.gpu, num_experts, num_gpus)
    table_gpu = torch.from_numpy(table.gpu)
    rows, times = [], []
    for _ in range(trials):
        pairs = _zipf_pairs(rng, popularity * rng.lognormal(0.0, 0.4, num_experts), tokens, top_k)
        counts = np.bincount(pairs, minlength=num_experts)
        flat, counts_t = torch.from_numpy(pairs), torch.from_numpy(counts)
        host = balanced_split(plan.expert, plan.gpu, counts.astype(np.float64), num_gpus, entry)
        device = quotas_to_replicas(device_quotas(counts, table, entry, tile), table)
        whole = np.where(counts > 0, np.maximum(entry, tile * np.ceil(counts / tile)), 0.0)
        bound = max(whole.sum() / num_gpus, lp_min_peak(plan.expert, plan.gpu, counts.astype(np.float64), num_gpus))
        rows.append([_physical_peak(np.arange(num_experts) % num_gpus, counts, num_gpus, entry, tile) / bound,
                     _physical_peak(plan.gpu, host, num_gpus, entry, tile) / bound,
                     _physical_peak(plan.gpu, device, num_gpus, entry, tile) / bound])

        def torch_decision() -> torch.Tensor:
            return pair_replica(flat, device_quotas_torch(counts_t, table_gpu, num_gpus, entry, tile))

        times.append([
            _median_ms(lambda: balanced_split(plan.expert, plan.gpu, counts.astype(np.float64), num_gpus, entry), repeats),
            _median_ms(lambda: device_quotas(counts, table, entry, tile), repeats),
            _median_ms(torch_decision, repeats),
        ])
    ops = count_aten_ops(torch_decision)
    cuda = _cuda_on_device(flat, counts_t, table_gpu, num_gpus, entry, tile, repeats)
    return {"ratios": np.mean(rows, axis=0), "worst": np.max(rows, axis=0), "ms": np.median(times, axis=0),
            "ops": ops, "cuda_ms": cuda, "replicas": plan.expert.size}


def _cuda_on_device(flat, counts, table_gpu, num_gpus: int, entry: float, tile: int, repeats: int) -> float | None:
    """Median ms of the torch decision on the GPU (CUDA events), None without CUDA."""
    import torch

    from moeless_cli.serving.device_split import device_quotas_torch, pair_replica

    if not torch.cuda.is_available():
        return None
    flat, counts, table_gpu = flat.cuda(), counts.cuda(), table_gpu.cuda()
    return _cuda_ms(lambda: pair_replica(flat, device_quotas_torch(counts, table_gpu, num_gpus, entry, tile)), repeats)


def device_table(trials: int = 5, repeats: int = 30) -> None:
    """The second table (module docstring). One torch thread: the decision's ops are tiny, and
    intra-op threads only contend (on this shared 2-core machine 2 threads ran 5-8x slower)."""
    import torch

    torch.set_num_threads(1)
    print(f"{'cost':>18s} {'E x G':>8s} {'tokens':>6s} {'R':>4s} {'host ms':>8s} {'numpy ms':>8s} {'torch ms':>8s} "
          f"{'cuda ms':>8s} {'ops':>4s} {'static':>7s} {'host':>7s} {'device':>7s} {'dev max':>7s}")
    for preset, hardware in COST_SETTINGS:
        entry, tile = _entry_tokens(preset, hardware)
        for experts, gpus, tokens, top_k in DEVICE_CASES:
            r = _device_case(experts, gpus, tokens, top_k, entry, tile, trials, repeats)
            cuda = f"{r['cuda_ms']:8.3f}" if r["cuda_ms"] is not None else f"{'n/a':>8s}"
            print(f"{preset + '@' + hardware:>18s} {experts:>3d} x {gpus:<3d} {tokens:6d} {r['replicas']:4d} "
                  f"{r['ms'][0]:8.3f} {r['ms'][1]:8.3f} {r['ms'][2]:8.3f} {cuda} {r['ops']:4d} "
                  f"{r['ratios'][0]:7.3f} {r['ratios'][1]:7.3f} {r['ratios'][2]:7.3f} {r['worst'][2]:7.3f}")
    print("costs are the busiest GPU's physical cost / lower bound (1.0 = optimal), mean over batches ('dev max': "
          "worst batch); times are one decision's median on this machine; 'ops' counts the torch twin's aten ops "
          "(views excepted); one torch thread")


def main() -> None:
    from moeless_cli.planning import PlanningProblem, solve
    from moeless_cli.planning.dispatch import balanced_split, equal_split, gpu_work, lp_min_peak, water_fill
    from moeless_cli.planning.metrics import static_gpu_loads

    print(f"{'E x G':>9s} {'batch':>8s} {'static':>7s} {'equal':>7s} {'water':>7s} {'whole':>7s} {'optimum':>7s} "
          f"{'whole/opt':>9s} {'water ms':>8s} {'whole ms':>8s}")
    for num_experts, num_gpus, top_k in ((8, 8, 2), (64, 8, 8), (128, 16, 8), (256, 32, 8)):
        rng = np.random.default_rng(0)
        popularity = rng.permutation(1000.0 / np.arange(1, num_experts + 1) ** 1.0)
        plan = solve("ilp", popularity[None, :], PlanningProblem(num_gpus=num_gpus, time_limit_s=5.0)).plan.layers[0]
        for label, tokens in (("prefill", 512 * num_gpus // top_k), ("decode", 4)):
            rows = []
            for trial in range(5):  # batch loads drift from the planned popularity
                load = _batch_load(rng, popularity * rng.lognormal(0.0, 0.4, num_experts), tokens, top_k)
                mean = load.sum() / num_gpus
                start = time.perf_counter()
                water = water_fill(plan.expert, plan.gpu, load, num_gpus)
                water_ms = (time.perf_counter() - start) * 1e3
                start = time.perf_counter()
                whole = balanced_split(plan.expert, plan.gpu, load, num_gpus)
                whole_ms = (time.perf_counter() - start) * 1e3
                optimum = np.ceil(lp_min_peak(plan.expert, plan.gpu, load, num_gpus) - 1e-6)
                rows.append((
                    static_gpu_loads(load, num_gpus).max() / mean,
                    gpu_work(plan.gpu, equal_split(plan.expert, load), num_gpus).max() / mean,
                    gpu_work(plan.gpu, water, num_gpus).max() / mean,
                    gpu_work(plan.gpu, whole, num_gpus).max() / mean,
                    optimum / mean,
                    water_ms, whole_ms,
                ))
            s, e, w, b, opt, wms, bms = np.mean(rows, axis=0)
            print(f"{num_experts:>4d} x {num_gpus:<3d} {label:>8s} {s:7.3f} {e:7.3f} {w:7.3f} {b:7.3f} {opt:7.3f} "
                  f"{b / opt:9.4f} {wms:8.3f} {bms:8.3f}")
    print("loads are max GPU load / mean (1.0 = perfect balance); plan: ilp on the popularity, batch loads drift "
          "lognormal(0, 0.4); 'water' is fractional, 'whole' and 'optimum' count whole tokens")


def fused_kernels(passes_list: tuple[int, ...] = (0, 1, 2, 4)) -> None:
    """Kernels inductor generates for the whole device decision, per refinement passes (64 experts x 8 GPUs)."""
    import torch
    from torch._inductor import metrics

    from moeless_cli.online.device_dispatch import BALANCED_KERNELS
    from moeless_cli.planning.device_split import DEFAULT_PASSES
    from moeless_cli.serving.device_split import device_quotas_torch, pair_replica

    num_experts, num_gpus, width = 64, 8, 3
    entry, tile = _entry_tokens("mixtral-8x7b", "a6000")
    table_gpu = torch.from_numpy(np.stack([(np.arange(num_experts) + k) % num_gpus for k in range(width)], 1))
    flat = torch.from_numpy(np.random.default_rng(0).integers(0, num_experts, 2048))
    print(f"{'passes':>6s} {'kernels':>7s} {'compile s':>9s}")
    for passes in passes_list:
        def decision(pairs: torch.Tensor, gpus: torch.Tensor, passes: int = passes) -> torch.Tensor:
            counts = torch.zeros(num_experts, dtype=torch.int64).scatter_add_(0, pairs, torch.ones_like(pairs))
            return pair_replica(pairs, device_quotas_torch(counts, gpus, num_gpus, entry, tile, passes))

        torch._dynamo.reset()
        metrics.reset()
        started = time.perf_counter()
        torch.compile(decision, dynamic=False)(flat, table_gpu)
        print(f"{passes:>6d} {metrics.generated_kernel_count:>7d} {time.perf_counter() - started:>9.0f}")
    print(f"charged by the simulator: {BALANCED_KERNELS} kernels at the default {DEFAULT_PASSES} passes")


if __name__ == "__main__":
    if "--fused" in sys.argv:
        fused_kernels()
    else:
        if "--device" not in sys.argv:
            main()
        device_table()
