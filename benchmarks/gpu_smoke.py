"""Serve the built-in models on one GPU and check the tokens: the CUDA paths' smoke test.

For each built-in model (tiny-mixtral, tiny-olmoe) and dtype (bfloat16, float32), on --device:
- plain transformers (its own `from_pretrained`, default experts implementation) generates the
  serve workload greedily, one request at a time (`serving.reference`), and once more with
  `experts_implementation="eager"`, for comparison;
- `moeless serve`, local backend, --workers workers on the device: its tokens must equal plain's;
- `moeless serve --backend dist`, one rank, NCCL, on the device: its tokens must equal plain's;
- the first layer's MoE output on one batch of the prompts, served (every expert once) vs plain:
  the largest |difference| of the logits (0 = bit-identical);
- host-to-device weight copies: what each serve run measured (`functions_measured`), and one MoE
  layer's experts copied one at a time as serve copies them (`HostStore.copy_to`, pageable) and from
  pinned memory, in microseconds per expert and GB/s.
It prints a table, writes the JSON to --out (atomically), and exits 0 when every run matched, 1 when
tokens differ or a run failed, and 2 with one line when torch sees no CUDA device. Sized for well
under 5 minutes on one H200 (8 requests x 16 tokens per run; the dist runs start torchrun):

    timeout 300 python benchmarks/gpu_smoke.py --out gpu_smoke.json
    python benchmarks/gpu_smoke.py --device cpu --out /tmp/smoke.json   # the same checks on CPU (gloo)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("tiny-mixtral", "tiny-olmoe")
DTYPES = ("bfloat16", "float32")


def options_for(model: str, dtype: str, device: str, args: argparse.Namespace, backend: str) -> Any:
    from moeless_cli.serving.setup import ServeOptions

    return ServeOptions(model=model, dtype=dtype, devices=(device,), backend=backend,
                        workers=args.workers if backend == "local" else 1, max_requests=args.requests,
                        max_output_tokens=args.tokens, max_prompt_tokens=64, time_scale=20.0)


def plain_references(model: str, dtype: str, device: str, workload: Any) -> dict[str, Any]:
    """Plain transformers' tokens with its default experts implementation and with eager."""
    import torch
    from transformers import AutoModelForCausalLM

    from moeless_cli.models import resolve_model_path
    from moeless_cli.serving.reference import reference_outputs

    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path(model), dtype=getattr(torch, dtype),
                                                 local_files_only=True).to(device).eval()
    default_impl = plain.config._experts_implementation
    start = time.perf_counter()
    outputs = reference_outputs(plain, workload)
    seconds = time.perf_counter() - start
    plain.set_experts_implementation("eager")
    eager = reference_outputs(plain, workload)
    return {"outputs": outputs, "eager_outputs": eager, "implementation": default_impl, "seconds": seconds}


def served_run(options: Any) -> dict[str, Any]:
    """One `moeless serve` run: its tokens, wall time, the copies it measured, or the error."""
    from moeless_cli.jobs.serve import serve

    start = time.perf_counter()
    try:
        report = serve(options).report
    except Exception as exc:  # a smoke test reports every failure and goes on
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
    copies = report["functions_measured"]
    return {"outputs": report["outputs"], "seconds": time.perf_counter() - start,
            "completed": report["requests"]["completed"], "failed": report["requests"]["failed"],
            "copies": copies["created"], "copy_bytes": copies["bytes_moved"], "copy_s": copies["cold_start_s"],
            "tokens_per_s": report["throughput_tokens_per_s"]}


def logits_difference(model: str, dtype: str, device: str, workload: Any, workers: int) -> float:
    """Largest |served - plain| logit on a left-padded batch of the first 4 prompts, every expert
    once (no expert's rows split), all workers on `device`."""
    import torch

    from moeless_cli.models import load_moe_model
    from moeless_cli.online.fixed_plan import fixed_plan_policy
    from moeless_cli.planning.solvers.static import static_plan
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    loaded = load_moe_model(model, device=device, dtype=dtype)
    prompts = [workload.prompts[r.id] for r in workload.requests[:4]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    plan = static_plan(loaded.num_moe_layers, loaded.num_experts, workers)
    with torch.no_grad():
        plain = loaded.model(input_ids=ids, attention_mask=mask).logits
        runtime = ExpertParallelRuntime(loaded, make_local_workers(workers, [device]), fixed_plan_policy(plan))
        runtime.install()
        served = loaded.model(input_ids=ids, attention_mask=mask).logits
        runtime.uninstall()
    return float((served.float() - plain.float()).abs().max())


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def copy_timing(loaded: Any, device: str, repeats: int) -> dict[str, Any]:
    """loaded: the model on the CPU. One MoE layer's experts copied host -> device one at a time: as
    serve does (pageable, a fresh tensor per copy) and from pinned memory (CUDA only); microseconds
    per expert (median) and GB/s."""
    import torch

    from moeless_cli.serving.experts import HostStore, expert_math_of

    module = loaded.experts(0)
    store = HostStore()
    store.add_layer(0, module, expert_math_of(module, loaded.model_id))
    cuda = device.startswith("cuda")
    pinned = [{n: t[e].detach().contiguous().pin_memory() for n, t in module.named_parameters()}
              for e in range(loaded.num_experts)] if cuda else []
    targets = [{n: torch.empty_like(t, device=device) for n, t in p.items()} for p in pinned]

    def timed(copy_one) -> float:
        times = []
        for _ in range(repeats):
            for e in range(loaded.num_experts):
                _sync(device)
                start = time.perf_counter()
                copy_one(e)
                _sync(device)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    nbytes = store.expert_bytes
    pageable_s = timed(lambda e: store.copy_to(0, e, device))
    out = {"expert_bytes": nbytes, "pageable_us": pageable_s * 1e6, "pageable_gbps": nbytes / pageable_s / 1e9,
           "pinned_us": None, "pinned_gbps": None}
    if cuda:
        pinned_s = timed(lambda e: [targets[e][n].copy_(t, non_blocking=True) for n, t in pinned[e].items()])
        out.update(pinned_us=pinned_s * 1e6, pinned_gbps=nbytes / pinned_s / 1e9)
    return out


def check_case(model: str, dtype: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every check for one (model, dtype): plain references, both backends, logits, copies."""
    from moeless_cli.models import load_moe_model
    from moeless_cli.serving.setup import build_workload

    on_cpu = load_moe_model(model, device="cpu", dtype=dtype)
    workload = build_workload(options_for(model, dtype, device, args, "local"), on_cpu.tokenizer)
    plain = plain_references(model, dtype, device, workload)
    case: dict[str, Any] = {"model": model, "dtype": dtype, "plain_implementation": plain["implementation"],
                            "plain_s": plain["seconds"],
                            "eager_equals_default": plain["eager_outputs"] == plain["outputs"]}
    for backend in args.backends.split(","):
        run = served_run(options_for(model, dtype, device, args, backend))
        run["identical"] = run.get("outputs") == plain["outputs"]
        run["identical_to_eager"] = run.get("outputs") == plain["eager_outputs"]
        run.pop("outputs", None)
        case[backend] = run
    case["max_abs_logit_diff"] = logits_difference(model, dtype, device, workload, args.workers)
    case["copy"] = copy_timing(on_cpu, device, args.copy_repeats)
    return case


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    cuda = device.startswith("cuda")
    return {"device": device, "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def print_table(doc: dict[str, Any]) -> None:
    env = doc["environment"]
    print(f"{env['device_name']} (torch {env['torch']}, CUDA {env['cuda']}, NCCL {env['nccl']}, "
          f"transformers {env['transformers']})")
    print(f"{'model':13s} {'dtype':9s} {'plain impl':10s} {'local':>9s} {'dist':>9s} {'max|dlogit|':>11s} "
          f"{'copies':>6s} {'serve us/expert':>15s} {'pageable us':>11s} {'pinned us':>9s} {'pinned GB/s':>11s}")
    for c in doc["cases"]:
        local, dist, copy = c.get("local", {}), c.get("dist", {}), c["copy"]
        per_copy = local["copy_s"] / local["copies"] * 1e6 if local.get("copies") else float("nan")
        print(f"{c['model']:13s} {c['dtype']:9s} {c['plain_implementation']:10s} {_verdict(local):>9s} "
              f"{_verdict(dist):>9s} {c['max_abs_logit_diff']:11.3g} {local.get('copies', 0):6d} {per_copy:15.1f} "
              f"{copy['pageable_us']:11.1f} {_number(copy['pinned_us'], '9.1f')} {_number(copy['pinned_gbps'], '11.3g')}")
    for c in doc["cases"]:
        for backend in ("local", "dist"):
            if "error" in c.get(backend, {}):
                print(f"{c['model']} {c['dtype']} {backend}: {c[backend]['error']}")
    print(f"all identical: {doc['all_identical']} ({doc['seconds']:.0f} s)")


def _number(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'n/a':>{width}s}" if value is None else format(value, spec)


def _verdict(run: dict[str, Any]) -> str:
    if not run:
        return "-"
    if "error" in run:
        return "ERROR"
    return "identical" if run["identical"] else ("=eager" if run["identical_to_eager"] else "DIFFERS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (atomically)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated built-in names")
    parser.add_argument("--workers", type=int, default=4, help="local-backend workers, all on --device")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    parser.add_argument("--copy-repeats", type=int, default=5)
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--backends", default="local,dist", help="serve backends to check (local, dist)")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_smoke: torch {torch.__version__} sees no CUDA device; run it on a GPU machine", file=sys.stderr)
        return 2
    from moeless_cli.fileio import write_json_atomic

    start = time.perf_counter()
    cases = [check_case(m, d, args.device, args) for m in args.models.split(",") for d in args.dtypes.split(",")]
    identical = all(c[b].get("identical", False) for c in cases for b in args.backends.split(","))
    doc = {"environment": environment(args.device), "cases": cases, "all_identical": identical,
           "seconds": time.perf_counter() - start}
    write_json_atomic(args.out, doc)
    print_table(doc)
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
