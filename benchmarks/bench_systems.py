"""Every system side by side on several model presets and traces (simulated), in one run.

Prints, per setting, each system's mean MoE-layer latency (same batches for all) and GB·s cost with
their ratios to static EP, EPLB, Oracle and moeless-paper, next to the published ratios
(MoEless paper: 0.57x static EP latency, 0.78x EPLB, 0.07x static EP cost), plus the floor
Oracle / static that routing skew allows. Stages (profile, predictor, plan) are cached per routing
model under --out, so a second run only re-simulates.

  .venv/bin/python benchmarks/bench_systems.py [--max-requests 200] [--out bench-out/benchmarks] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PUBLISHED = {"moe_vs_static": 0.5681, "moe_vs_eplb": 0.7811, "gbs_vs_static": 0.0732}
SETTINGS = [
    # (preset, trace, batching, time model)
    ("mixtral-8x7b", "azure-conv", "continuous", "default"),
    ("mixtral-8x7b", "azure-code", "continuous", "default"),
    ("mixtral-8x7b", "azure-conv", "paper", "default"),
    ("mixtral-8x7b", "azure-conv", "continuous", "roofline"),
    ("phi-3.5-moe", "azure-conv", "continuous", "default"),
    ("phi-3.5-moe", "azure-code", "continuous", "default"),
    ("olmoe-1b-7b", "azure-conv", "continuous", "default"),
    ("olmoe-1b-7b", "azure-code", "continuous", "default"),
    ("qwen3-30b-a3b", "azure-conv", "continuous", "default"),
    ("qwen3-30b-a3b", "azure-code", "continuous", "default"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "benchmarks")
    parser.add_argument("--hardware", default="a6000")
    parser.add_argument("--quick", action="store_true", help="only the published setting")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--preset", action="append", help="only these presets (repeatable)")
    parser.add_argument("--render", type=Path, help="print markdown rows from a --json file and exit")
    args = parser.parse_args()

    if args.render:
        print(markdown_rows(json.loads(args.render.read_text())))
        return 0
    from moeless_cli.bench.compare import run_bench
    from moeless_cli.bench.pipeline import BenchRequest
    from moeless_cli.errors import MoelessError
    from moeless_cli.models.loading import builtin_names
    from moeless_cli.sim.presets import get_preset

    shipped = set(builtin_names())
    results = []
    settings = SETTINGS[:1] if args.quick else SETTINGS
    if args.preset:
        settings = [s for s in settings if s[0] in args.preset]
    header = (f"{'preset':14s} {'trace':10s} {'batch':10s} {'time':8s} {'system':14s} {'moe ms':>8s} {'/static':>7s} "
              f"{'/EPLB':>6s} {'/Oracle':>7s} {'/paper':>6s} {'GB·s/static':>11s} {'TTFT p50':>8s} {'cold':>6s}")
    print(header)
    for preset, trace, batching, time_model in settings:
        model = get_preset(preset).routing_model
        if model not in shipped:
            print(f"{preset:14s} {trace:10s} skipped: routing model {model} is not shipped in this install")
            continue
        request = BenchRequest(preset=preset, trace=trace, batching=batching, time_model=time_model,
                               hardware=args.hardware, max_requests=args.max_requests, out=args.out / model)
        started = time.perf_counter()
        try:
            result = run_bench(request)
        except MoelessError as exc:
            print(f"{preset:14s} {trace:10s} failed: {exc}")
            continue
        seconds = time.perf_counter() - started
        for name, core in result["systems"].items():
            r = result["ratios"][name]
            print(f"{preset:14s} {trace:10s} {batching:10s} {time_model:8s} {name:14s} "
                  f"{core['moe_layer_ms']['mean']:8.4f} {r['moe_vs_static']:7.3f} {r['moe_vs_eplb']:6.3f} "
                  f"{r['moe_vs_oracle']:7.3f} {r['moe_vs_moeless_paper']:6.3f} {r['gbs_vs_static']:11.4f} "
                  f"{core['latency_s']['ttft']['p50']:8.3f} {core['functions']['cold_starts']:6d}")
        floor = result["ratios"]["oracle"]["moe_vs_static"]
        print(f"  floor Oracle/static = {floor:.3f}; published moeless/static = {PUBLISHED['moe_vs_static']}, "
              f"/EPLB = {PUBLISHED['moe_vs_eplb']}, GB·s/static = {PUBLISHED['gbs_vs_static']}; "
              f"{result['setting']['slots_per_gpu_per_layer']} slots/GPU/layer; {seconds:.0f} s")
        results.append({k: result[k] for k in ("setting", "systems", "ratios")})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def markdown_rows(results: list[dict]) -> str:
    """One markdown table row per (setting, system), bold for moeless."""
    lines = ["| preset | trace | batching | time model | system | MoE ms | /static | /EPLB | /Oracle | /moeless-paper "
             "| GB·s /static | GB·s live /static | TTFT p50 s | cold starts |", "|" + "---|" * 14]
    for result in results:
        s = result["setting"]
        live = result["systems"]["static"]["cost"]["gbs_live"]
        for i, (name, core) in enumerate(result["systems"].items()):
            r = result["ratios"][name]
            head = [s["preset"]["name"], s["trace"], s["batching"], s["time_model"]] if i == 0 else ["", "", "", ""]
            cells = [name + (" (lossy)" if core["lossy"] else ""), f"{core['moe_layer_ms']['mean']:.4f}",
                     f"{r['moe_vs_static']:.3f}", f"{r['moe_vs_eplb']:.3f}", f"{r['moe_vs_oracle']:.3f}",
                     f"{r['moe_vs_moeless_paper']:.3f}", f"{r['gbs_vs_static']:.4f}",
                     f"{core['cost']['gbs_live'] / live:.2f}", f"{core['latency_s']['ttft']['p50']:.3f}",
                     str(core["functions"]["cold_starts"])]
            if name == "moeless":
                cells = [f"**{c}**" for c in cells[:6]] + cells[6:]
            lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
