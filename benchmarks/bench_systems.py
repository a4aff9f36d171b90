"""Every system side by side on several model presets and traces (simulated), in one run.

Prints, per setting, each system's mean MoE-layer latency (same batches for all) and GB·s cost with
their ratios to static EP, EPLB, Oracle and moeless-paper, next to the published ratios
(MoEless paper: 0.57x static EP latency, 0.78x EPLB, 0.07x static EP cost), plus the floor
Oracle / static that routing skew allows. Stages (profile, predictor, plan) are cached per routing
model under --out, so a second run only re-simulates. The published setting's chat prompts come from
ShareGPT read by path from ../shared/data/sharegpt-1k (never shipped: unclear terms); without it
that row is skipped with a message and the `mix` rows still run. Fine-grained presets run fewer
requests (their simulation is slower: hundreds of replicas per layer and iteration).

  .venv/bin/python benchmarks/bench_systems.py [--max-requests 200] [--out bench-out/benchmarks] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SHAREGPT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sharegpt-1k" / "ShareGPT_V3_filtered_1000.json"


@dataclass(frozen=True)
class Setting:
    preset: str
    trace: str
    batching: str = "continuous"
    time_model: str = "physical"
    hardware: str = "a6000"
    max_requests: int | None = None  # None: --max-requests
    equal_budget: bool = False  # serverless systems held to EPLB's replicas
    chat: bool = False  # routing recorded on ShareGPT prompts (by path; not shipped) instead of `mix`


SETTINGS = [
    Setting("mixtral-8x7b", "azure-conv", chat=True),  # the published setting: chat prompts
    Setting("mixtral-8x7b", "azure-conv"),
    Setting("mixtral-8x7b", "azure-code"),
    Setting("mixtral-8x7b", "azure-conv", batching="paper"),
    Setting("mixtral-8x7b", "azure-conv", time_model="roofline"),
    Setting("phi-3.5-moe", "azure-conv"),
    Setting("phi-3.5-moe", "azure-code"),
    Setting("olmoe-1b-7b", "azure-conv", max_requests=100),
    Setting("olmoe-1b-7b", "azure-code", max_requests=100),
    Setting("olmoe-1b-7b", "azure-conv", max_requests=100, equal_budget=True),
    Setting("qwen3-30b-a3b", "azure-conv", max_requests=100),
    Setting("deepseek-v3", "azure-conv", hardware="h200", max_requests=50),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "benchmarks")
    parser.add_argument("--quick", action="store_true", help="only the published setting")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--preset", action="append", help="only these presets (repeatable)")
    parser.add_argument("--render", type=Path, help="print markdown rows from a --json file and exit")
    args = parser.parse_args()

    if args.render:
        print(markdown_rows(json.loads(args.render.read_text())))
        return 0
    from moeless_cli.bench.outputs import against_the_paper
    from moeless_cli.errors import MoelessError
    from moeless_cli.jobs.bench import BenchRequest, run_bench
    from moeless_cli.models.loading import builtin_names
    from moeless_cli.sim.presets import get_preset

    shipped = set(builtin_names())
    results = []
    settings = SETTINGS[:1] if args.quick else SETTINGS
    if args.preset:
        settings = [s for s in settings if s.preset in args.preset]
    header = (f"{'preset':14s} {'trace':10s} {'batch':10s} {'time':8s} {'system':14s} {'moe ms':>8s} {'/static':>7s} "
              f"{'/EPLB':>6s} {'/Oracle':>7s} {'/paper':>6s} {'GB·s/static':>11s} {'TTFT p50':>8s} {'cold':>6s}")
    print(header)
    for setting in settings:
        preset, trace, batching, time_model = setting.preset, setting.trace, setting.batching, setting.time_model
        model = get_preset(preset).routing_model
        if model not in shipped:
            print(f"{preset:14s} {trace:10s} skipped: routing model {model} is not shipped in this install")
            continue
        dataset, cache = "mix", args.out / model
        if setting.chat:
            if not SHAREGPT.is_file():
                print(f"{preset:14s} {trace:10s} chat prompts skipped: {SHAREGPT} is missing (ShareGPT is read by "
                      "path from ../shared, never shipped)")
                continue
            dataset, cache = str(SHAREGPT), args.out / f"{model}-sharegpt"
        request = BenchRequest(preset=preset, trace=trace, batching=batching, time_model=time_model,
                               hardware=setting.hardware, max_requests=setting.max_requests or args.max_requests,
                               equal_budget=setting.equal_budget, dataset=dataset, out=cache)
        started = time.perf_counter()
        try:
            result = run_bench(request).to_json()
        except MoelessError as exc:
            print(f"{preset:14s} {trace:10s} failed: {exc}")
            continue
        seconds = time.perf_counter() - started
        for name, core in result["systems"].items():
            r = result["ratios"][name]
            if "latency_s" not in core:  # the lossless floor (`bound`): latency only
                print(f"{preset:14s} {trace:10s} {batching:10s} {time_model:8s} {name:14s} "
                      f"{core['moe_layer_ms']['mean']:8.4f} {r['moe_vs_static']:7.3f} {r['moe_vs_eplb']:6.3f}")
                continue
            print(f"{preset:14s} {trace:10s} {batching:10s} {time_model:8s} {name:14s} "
                  f"{core['moe_layer_ms']['mean']:8.4f} {r['moe_vs_static']:7.3f} {r['moe_vs_eplb']:6.3f} "
                  f"{r['moe_vs_oracle']:7.3f} {r['moe_vs_moeless_paper']:6.3f} {r['gbs_vs_static']:11.4f} "
                  f"{core['latency_s']['ttft']['p50']:8.3f} {core['functions']['cold_starts']:6d}")
        print(f"  {against_the_paper(result['ratios'])} {seconds:.0f} s")
        results.append({k: result[k] for k in ("setting", "systems", "ratios")} | {"chat": setting.chat})
        print(f"  {setting_label(results[-1])}")
        if args.json:  # after every setting: a long run that stops early keeps what it measured
            args.json.write_text(json.dumps(results, indent=1))
    return 0


def setting_label(result: dict) -> str:
    """One line naming what a row group ran: model sizes, cluster, trace, prompts, batching, time, memory."""
    s = result["setting"]
    prompts = "ShareGPT chat prompts" if result.get("chat") else "`mix` prompts"
    cap = s.get("serverless_replica_cap_per_layer")
    scaling = ("serverless held to EPLB's budget" if cap == s["replica_budget_per_layer"] and
               cap < s["gpus"] * s["slots_per_gpu_per_layer"] else "serverless within memory")
    return (f"{s['preset']['name']} on {s['gpus']}x {s['hardware']}, {s['trace']} ({s['requests']} requests), "
            f"{prompts}, {s['batching']} batching, {s['time_model']} time model; EPLB budget "
            f"{s['replica_budget_per_layer']} replicas/layer, {scaling} ({s['slots_per_gpu_per_layer']} slots/GPU)")


def markdown_rows(results: list[dict]) -> str:
    """Per setting, a label line and one markdown table row per system, bold for moeless."""
    columns = ("| system | MoE ms | /static | /EPLB | /Oracle | /moeless-paper | GB·s /static | GB·s live /static "
               "| replicas/layer | TTFT p50 s | cold starts |")
    lines = []
    for result in results:
        lines += ["", f"**{setting_label(result)}**", "", columns, "|" + "---|" * 11]
        live = result["systems"]["static"]["cost"]["gbs_live"]
        for name, core in result["systems"].items():
            r = result["ratios"][name]
            if "latency_s" not in core:  # the lossless floor (`bound`): latency only
                cells = [name, f"{core['moe_layer_ms']['mean']:.4f}", f"{r['moe_vs_static']:.3f}",
                         f"{r['moe_vs_eplb']:.3f}", f"{r['moe_vs_oracle']:.3f}", f"{r['moe_vs_moeless_paper']:.3f}"]
                lines.append("| " + " | ".join(cells + ["-"] * 5) + " |")
                continue
            cells = [name + (" (lossy)" if core["lossy"] else ""), f"{core['moe_layer_ms']['mean']:.4f}",
                     f"{r['moe_vs_static']:.3f}", f"{r['moe_vs_eplb']:.3f}", f"{r['moe_vs_oracle']:.3f}",
                     f"{r['moe_vs_moeless_paper']:.3f}", f"{r['gbs_vs_static']:.4f}",
                     f"{core['cost']['gbs_live'] / live:.2f}", f"{core['replicas']['mean_per_layer']:.0f}",
                     f"{core['latency_s']['ttft']['p50']:.3f}", str(core["functions"]["cold_starts"])]
            if name == "moeless":
                cells = [f"**{c}**" for c in cells[:5]] + cells[5:]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
