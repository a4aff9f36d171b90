"""The regime table (issue #12 item 7) against issue #13's targets, one `moeless bench` run per cell.

For each model setting (Mixtral-8x7B on 8x A6000; the fine-grained OLMoE-1B-7B on 8x H100) and each
regime (decode-heavy: Azure conversation trace, continuous batching; prefill-heavy: Azure code trace;
the paper's one-second batches on the conversation trace; a shifting workload: the `shift` prompts,
code then math then prose, on the conversation trace), this runs `moeless bench --json --no-pareto`
as a subprocess of this Python and prints ONE markdown table: every system's mean MoE-layer latency
(same batches), moeless over the best other lossless system (static, eplb, eplb+balanced,
moeless-paper: named) and over the lossless floor `bound`, moeless's p99 over that system's p99, and
whether each target holds:
  - best:    moeless <= 1.00x the best other lossless system (every regime)
  - prefill: moeless <= 0.85x it in the prefill-heavy regime
  - bound:   moeless <= 1.10x `bound` (every regime)
  - p99:     moeless's p99 <= the best other system's p99

Each run's --json output is saved as <out>/<model>-<regime>/result.json (with args.json, the bench
arguments it ran with, and copies of its report.md, bench.json and plots); a run whose result.json
exists from the same arguments is not run again unless --force. Bench's cached stages (profile,
predictor, plan) live in <out>/stages/<model>-<dataset>/ and are shared by the regimes that record the
same prompts. A run that fails is reported (its error's last line) and the others go on; the table
marks it. Options that this script does not know are passed through to `moeless bench`, e.g. tiny
settings while developing:

  python benchmarks/regimes.py --models mixtral --regimes decode --requests 20 --num-prompts 8 --epochs 2
  python benchmarks/regimes.py                 # the full table (each run takes minutes)
  python benchmarks/regimes.py --render [--json]   # the table from saved results only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSetting:
    label: str  # how the table names it
    preset: str  # bench --preset
    hardware: str  # bench --hardware
    requests: int  # default trace requests replayed (--requests overrides)


@dataclass(frozen=True)
class Regime:
    label: str  # how the table names it
    trace: str  # bench --trace
    batching: str = "continuous"  # bench --batching
    dataset: str = "mix"  # bench --dataset (prompts whose routing is recorded)


MODELS = {
    "mixtral": ModelSetting("Mixtral-8x7B, 8x A6000", "mixtral-8x7b", "a6000", 200),
    "olmoe": ModelSetting("OLMoE-1B-7B, 8x H100", "olmoe-1b-7b", "h100", 50),  # 64 experts x top-8 in host Python:
    # 50 requests take 3-25 min per cell on 2 cores (100: over an hour for the decode-heavy one)
}
REGIMES = {
    "decode": Regime("decode-heavy (azure-conv)", "azure-conv"),
    "prefill": Regime("prefill-heavy (azure-code)", "azure-code"),
    "paper-batches": Regime("one-second batches (azure-conv)", "azure-conv", batching="paper"),
    "shift": Regime("shifting domains (azure-conv, shift)", "azure-conv", dataset="shift"),
}
PREFILL_HEAVY = "prefill"
SYSTEMS = ("static", "eplb", "eplb+balanced", "moeless-paper", "moeless", "bound")  # the table's latency columns
OTHER_LOSSLESS = ("static", "eplb", "eplb+balanced", "moeless-paper")  # what moeless must not be slower than
TARGETS = {"best": 1.00, "prefill": 0.85, "bound": 1.10, "p99": 1.00}  # issue #13: moeless over ... at most
TARGET_TEXT = {"best": "mean <= 1.00x the best other lossless system, every regime",
               "prefill": "mean <= 0.85x the best other lossless system, prefill-heavy regime",
               "bound": "mean <= 1.10x the lossless bound, every regime",
               "p99": "p99 <= the best other system's p99, every regime"}


def bench_args(model: ModelSetting, regime: Regime, requests: int, cache: Path, pareto: bool,
               passthrough: list[str]) -> list[str]:
    """`moeless bench` arguments of one cell (its cached stages in `cache`)."""
    return ["bench", "--preset", model.preset, "--hardware", model.hardware, "--trace", regime.trace,
            "--batching", regime.batching, "--dataset", regime.dataset, "--max-requests", str(requests),
            "--pareto" if pareto else "--no-pareto", "--out", str(cache), "--json", *passthrough]


def run_cell(args: list[str], cell: Path, force: bool) -> tuple[str, str]:
    """Run one cell unless its saved result came from the same arguments: ("saved" | "ran" | "failed", detail)."""
    result, saved_args = cell / "result.json", cell / "args.json"
    if not force and result.is_file() and saved_args.is_file() and json.loads(saved_args.read_text()) == args:
        return "saved", f"{result} (same arguments; --force runs it again)"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "moeless_cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        return "failed", f"exit {proc.returncode} after {seconds:.0f} s: {lines[-1] if lines else 'no message'}"
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        return "failed", f"bench printed no JSON document after {seconds:.0f} s: {proc.stdout[-200:]!r}"
    cell.mkdir(parents=True, exist_ok=True)
    for name in doc.get("files", []):  # the report and plots beside the result (the stage folder is shared)
        if Path(name).is_file():
            shutil.copy2(name, cell / Path(name).name)
    result.write_text(json.dumps(doc, indent=1))
    saved_args.write_text(json.dumps(args))
    return "ran", f"{seconds:.0f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def cell_row(model: str, regime: str, doc: dict[str, Any]) -> dict[str, Any]:
    """One table row from a bench --json document: means, the best other lossless system, ratios, targets."""
    systems = doc["systems"]
    mean = {name: systems[name]["moe_layer_ms"]["mean"] for name in SYSTEMS if name in systems}
    others = {name: mean[name] for name in OTHER_LOSSLESS if name in mean}
    best = min(others, key=others.get)
    vs_best = ratio(mean["moeless"], others[best])
    vs_bound = ratio(mean["moeless"], mean.get("bound"))
    p99 = ratio(systems["moeless"]["moe_layer_ms"]["p99"], systems[best]["moe_layer_ms"]["p99"])
    holds = {"best": vs_best <= TARGETS["best"],
             "prefill": vs_best <= TARGETS["prefill"] if regime == PREFILL_HEAVY else None,
             "bound": None if vs_bound is None else vs_bound <= TARGETS["bound"],
             "p99": None if p99 is None else p99 <= TARGETS["p99"]}
    setting = doc["setting"]
    return {"model": model, "regime": regime, "status": "ok", "requests": setting["requests"],
            "time_model": setting["time_model"], "traffic": setting.get("split", {}).get("kind", "in-sample"),
            "mean_ms": mean, "best_other": best, "moeless_vs_best_other": vs_best,
            "moeless_vs_bound": vs_bound, "moeless_p99_vs_best_other_p99": p99, "targets": holds}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _held(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**NO**")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The regime table: one row per cell, failed and missing cells marked, and a summary of the targets."""
    header = (["model", "regime", "requests", *[f"{name} ms" for name in SYSTEMS], "moeless / best other",
               "moeless / bound", "p99 / best other's", "<= 1.00 best", "<= 0.85 prefill", "<= 1.10 bound",
               "p99 <= best's"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        head = [MODELS[row["model"]].label, REGIMES[row["regime"]].label]
        if row["status"] != "ok":
            lines.append("| " + " | ".join(head + [f"{row['status']}: {row['detail']}"] + [""] * (len(header) - 3))
                         + " |")
            continue
        t = row["targets"]
        cells = [str(row["requests"]), *[_num(row["mean_ms"].get(name), 4) for name in SYSTEMS],
                 f"{_num(row['moeless_vs_best_other'])} ({row['best_other']})", _num(row["moeless_vs_bound"]),
                 _num(row["moeless_p99_vs_best_other_p99"]), _held(t["best"]), _held(t["prefill"]),
                 _held(t["bound"]), _held(t["p99"])]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines + ["", *summary_lines(rows)])


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Under the table: the settings every measured row shares, and each target's count of cells where it holds."""
    done = [row for row in rows if row["status"] == "ok"]
    lines = [f"{len(done)} of {len(rows)} cells measured"
             + (f"; time model {', '.join(sorted({r['time_model'] for r in done}))}, traffic "
                f"{', '.join(sorted({r['traffic'] for r in done}))}" if done else "") + "."]
    for key, text in TARGET_TEXT.items():
        judged = [row["targets"][key] for row in done if row["targets"][key] is not None]
        lines.append(f"- moeless {text}: holds in {sum(judged)} of {len(judged)} cells")
    lines.append("Best other: the lossless system among " + ", ".join(OTHER_LOSSLESS) + " with the lowest mean "
                 "MoE-layer latency on the same batches; p99 / best other's is over that system's p99.")
    return lines


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     epilog="Other options are passed through to `moeless bench`.")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument("--requests", type=int, help="trace requests replayed (default: 200 Mixtral, 50 OLMoE)")
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "regimes")
    parser.add_argument("--force", action="store_true", help="run again cells whose result is saved")
    parser.add_argument("--render", action="store_true", help="print the table from saved results only")
    parser.add_argument("--pareto", action="store_true", help="keep bench's latency-memory sweep (slow)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> int:
    args, passthrough = parse(argv)
    if args.requests is not None and args.requests < 1:
        print(f"error: --requests must be at least 1, got {args.requests}", file=sys.stderr)
        return 2
    rows = []
    for model in args.models:
        for regime in args.regimes:
            rows.append(collect(args, model, regime, passthrough))
    print(json.dumps(rows, indent=1) if args.json else markdown_table(rows))
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def collect(args: argparse.Namespace, model: str, regime: str, passthrough: list[str]) -> dict[str, Any]:
    """One cell's row: run it (unless --render or saved), then read its result; a failure becomes a marked row."""
    cell = args.out / f"{model}-{regime}"
    setting, kind = MODELS[model], REGIMES[regime]
    if not args.render:
        cache = args.out / "stages" / f"{model}-{kind.dataset}"
        bench = bench_args(setting, kind, args.requests or setting.requests, cache, args.pareto, passthrough)
        print(f"[{model} / {regime}] moeless {' '.join(bench)}", file=sys.stderr, flush=True)
        status, detail = run_cell(bench, cell, args.force)
        print(f"[{model} / {regime}] {status.upper()}: {detail}", file=sys.stderr, flush=True)
        if status == "failed":
            return {"model": model, "regime": regime, "status": "FAILED", "detail": detail}
    result = cell / "result.json"
    if not result.is_file():
        return {"model": model, "regime": regime, "status": "not run", "detail": f"no {result}"}
    try:
        return cell_row(model, regime, json.loads(result.read_text()))
    except (KeyError, ValueError, TypeError) as exc:
        return {"model": model, "regime": regime, "status": "FAILED", "detail": f"unreadable {result}: {exc!r}"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
