"""Bench outputs: the table rows, a markdown report, and PNGs (MoE-layer latency CDF, cost bars, and
the latency-memory Pareto when the sweep ran)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moeless_cli.bench.ablation import ablation_lines
from moeless_cli.fileio import write_bytes_atomic

if TYPE_CHECKING:
    from moeless_cli.bench.request import BenchResult

LATENCY_COLUMNS = (
    ("system", "system"), ("moe mean ms", "moe_mean"), ("moe p50", "moe_p50"), ("moe p99", "moe_p99"),
    ("vs static", "vs_static"), ("vs EPLB", "vs_eplb"), ("vs Oracle", "vs_oracle"), ("vs bound", "vs_bound"),
    ("TTFT p50 s", "ttft_p50"), ("TTFT p99", "ttft_p99"), ("TPOT p50 ms", "tpot_p50"), ("TPOT p99", "tpot_p99"),
    ("tok/s", "throughput"), ("lossy", "lossy"),
)
COST_COLUMNS = (
    ("system", "system"), ("GB·s live", "gbs_live"), ("live vs static", "gbs_live_vs_static"),
    ("live vs EPLB", "gbs_live_vs_eplb"), ("GB·s per invocation", "gbs_invocation"),
    ("per invocation vs static", "gbs_invocation_vs_static"), ("GPU·s serverless", "gpu_s_serverless"),
    ("GPU·s serverful", "gpu_s_serverful"), ("replicas/layer", "replicas"), ("cold starts", "cold"),
)
TABLES = (("Latency", LATENCY_COLUMNS), ("Cost (one billing rule for every system)", COST_COLUMNS))
PARETO_COLUMNS = (
    ("memory", "memory"), ("replicas/layer", "replicas"), ("system", "system"), ("MoE mean ms", "moe_mean"),
    ("GB·s live", "gbs_live"), ("GB·s per invocation", "gbs_invocation"), ("live replicas/layer", "held"),
    ("cold starts", "cold"), ("Pareto", "optimal"),
)
# The MoEless paper's headline ratios for MoEless (MoE-layer latency -43.19% vs static EP and
# -21.89% vs EPLB; cost -92.68% vs static EP), on its 8x A6000 Mixtral-8x7B testbed.
PUBLISHED = {"moe_vs_static": 0.5681, "moe_vs_eplb": 0.7811, "gbs_vs_static": 0.0732}


def against_the_paper(ratios: dict[str, dict[str, float | None]]) -> str:
    """One paragraph: moeless's ratios (system -> ratio name -> value, as BenchResult.ratios) beside the
    published ones, the lossless floor (`bound` where simulated, else Oracle's balance), memory billed
    alike, and the paper's asymmetric cost comparison, once, labelled as published."""
    floor_by = "bound" if "bound" in ratios else "oracle"
    r, floor = ratios["moeless"], ratios[floor_by]["moe_vs_static"]
    return (f"moeless / static EP {r['moe_vs_static']:.3f} (paper {PUBLISHED['moe_vs_static']}), / EPLB "
            f"{r['moe_vs_eplb']:.3f} (paper {PUBLISHED['moe_vs_eplb']}); the floor any lossless system can reach, "
            f"{floor_by} / static EP, is {floor:.3f} here: it is set by how skewed the routing is (docs/results.md). "
            f"Memory billed alike: live GB·s / static EP {_f(r['gbs_live_vs_static'])}, / EPLB "
            f"{_f(r['gbs_live_vs_eplb'])}; per invocation / static EP {_f(r['gbs_per_invocation_vs_static'])}. "
            f"As published (the paper's asymmetric rule: serverful systems pay reserved memory for the whole run, "
            f"serverless ones per invocation): GB·s / static {_f(r['gbs_vs_static'], 4)} "
            f"(paper {PUBLISHED['gbs_vs_static']}).")


def _f(value: Any, digits: int = 3, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{float(value) * scale:.{digits}f}"


def _g(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _floor_row(name: str, core: dict[str, Any], r: dict[str, float | None]) -> dict[str, str]:
    """A row for the lossless floor (`bound`): MoE-layer latency and its ratios only ("-" elsewhere)."""
    row = {key: "-" for _, columns in TABLES for _, key in columns}
    moe = core["moe_layer_ms"]
    row.update(system=name, moe_mean=_f(moe["mean"]), moe_p50=_f(moe["p50"]), moe_p99=_f(moe["p99"]),
               vs_static=_f(r["moe_vs_static"], 2), vs_eplb=_f(r["moe_vs_eplb"], 2),
               vs_oracle=_f(r["moe_vs_oracle"], 2), vs_bound=_f(r.get("moe_vs_bound"), 2), lossy="no")
    return row


def table_rows(result: BenchResult) -> list[dict[str, str]]:
    rows = []
    for name, core in result.systems.items():
        r = result.ratios[name]
        if "latency_s" not in core:  # not a served system: the lossless floor
            rows.append(_floor_row(name, core, r))
            continue
        lat = core["latency_s"]
        rows.append({
            "system": name,
            "moe_mean": _f(core["moe_layer_ms"]["mean"]), "moe_p50": _f(core["moe_layer_ms"]["p50"]),
            "moe_p99": _f(core["moe_layer_ms"]["p99"]),
            "vs_static": _f(r["moe_vs_static"], 2), "vs_eplb": _f(r["moe_vs_eplb"], 2), "vs_oracle": _f(r["moe_vs_oracle"], 2),
            "vs_bound": _f(r.get("moe_vs_bound"), 2),
            "ttft_p50": _f(lat["ttft"]["p50"]), "ttft_p99": _f(lat["ttft"]["p99"]),
            "tpot_p50": _f(lat["tpot"]["p50"], 2, 1e3), "tpot_p99": _f(lat["tpot"]["p99"], 2, 1e3),
            "throughput": _f(core["throughput_tokens_per_s"], 0),
            "gbs_live": _g(core["cost"]["gbs_live"]), "gbs_live_vs_static": _f(r["gbs_live_vs_static"]),
            "gbs_live_vs_eplb": _f(r["gbs_live_vs_eplb"]), "gbs_invocation": _g(core["cost"]["gbs_per_invocation"]),
            "gbs_invocation_vs_static": _f(r["gbs_per_invocation_vs_static"]),
            "gpu_s_serverless": _f(core["cost"]["serverless_gpu_s"], 1),
            "gpu_s_serverful": _f(core["cost"]["serverful_gpu_s"], 1),
            "replicas": _f(core.get("replicas", {}).get("mean_per_layer"), 1),
            "cold": str(core["functions"]["cold_starts"]), "lossy": "yes" if core["lossy"] else "no",
        })
    return rows


def markdown_report(result: BenchResult) -> str:
    s = result.setting
    preset = s["preset"]
    if result.mode == "real":
        return _markdown_real(result)
    lines = [
        "# moeless bench",
        "",
        f"- mode: {result.mode}; time model: {s['time_model']} ({s.get('time_model_note', '')}); "
        f"batching: {s['batching']}; host decisions charged: {s.get('decision_cost', 'none')}",
        f"- traffic: {s['split']['kind']}: {s['split']['note']}" if "split" in s else "- traffic: in-sample",
        f"- cluster: {s['gpus']} x {s['hardware']} ({s['hardware_description']}); "
        f"{s['slots_per_gpu_per_layer']} replica slots per GPU per layer",
        f"- model sizes: {preset['name']} ({preset['moe_layers']} MoE layers, {preset['num_experts']} experts "
        f"top-{preset['top_k']}, {preset['expert_mb']} MB per expert)",
        f"- routing: recorded from {s['model']} ({s.get('model_path', s['model'])}) on `{s['dataset']}` "
        f"({s['simulated_layers']} layers mapped cyclically, each expert split {s['expert_split']}x); "
        f"predictor layers {s['predictor_layers']}",
        f"- trace: {s['trace']}, {s['requests']} requests (time scale {s['time_scale']}); keep-alive {s['keep_alive_s']} s",
        "",
        "MoE-layer latency is measured on the same batches for every system (static EP's iteration sequence);",
        "TTFT, TPOT, throughput and costs come from each system's own closed-loop run.",
        "",
    ]
    if "bound" in result.systems:
        lines += ["`bound` is the clairvoyant lossless floor: knowing each batch, no placement within the same memory",
                  "and no whole-token split can take less under this time model (proof: `planning/bounds.py`);",
                  "Oracle is lossy and may go below it.", ""]
    lines += _tables(result)
    lines += [
        "",
        f"Against the paper: {against_the_paper(result.ratios)}",
        "",
        "Costs, one billing rule for every system: `GB·s live` is the memory of every live instance x its",
        "lifetime, keep-alive and pinned ones included (what a serverless GPU platform bills and a reserved",
        "cluster pays); `GB·s per invocation` is each invocation's instance GB x the time its layer ran (the",
        "paper's proxy, applied to all). GPU·s serverless counts GPU time spent on layers, serverful all GPUs",
        "for the whole run.",
        "",
        "![MoE-layer latency CDF](moe_latency_cdf.png)",
        "",
        "![Cost](cost.png)",
        "",
    ]
    return "\n".join(lines + scaling_lines(result.timeline) + pareto_lines(result.pareto)
                     + ablation_lines(result.ablation))


def scaling_lines(timeline: dict[str, Any] | None) -> list[str]:
    """Markdown: each system's fewest and most live replicas per layer over its run, and the plot ([] without one)."""
    if not timeline:
        return []
    lines = ["## Serverless scaling", "",
             "Live replicas per layer over time in each system's own closed-loop run (after every iteration and every "
             "idle gap's keep-alive reclaim), beside the trace's arrival rate.", "",
             "| system | fewest live replicas/layer | most |", "|---|---|---|"]
    for name, series in timeline["systems"].items():
        values = np.asarray(series["live_replicas_per_layer"], dtype=np.float64)
        if values.size:
            lines.append(f"| {name} | {values.min():.1f} | {values.max():.1f} |")
    return lines + ["", "![Live replicas over time](scaling.png)", ""]


def pareto_rows(pareto: dict[str, Any] | None) -> list[dict[str, str]]:
    """The sweep's rows as strings keyed like PARETO_COLUMNS ([] when the sweep did not run)."""
    return [{"memory": row["memory"], "replicas": str(row["replicas_per_layer"]), "system": row["system"],
             "moe_mean": _f(row["moe_layer_ms"], 4), "gbs_live": _g(row["gbs_live"]),
             "gbs_invocation": _g(row["gbs_per_invocation"]), "held": _f(row["live_replicas_per_layer"], 1),
             "cold": str(row["cold_starts"]), "optimal": "yes" if row["pareto_optimal"] else ""}
            for row in (pareto or {}).get("rows", [])]


def pareto_caption(pareto: dict[str, Any]) -> str:
    return (f"Replica memory per layer swept for {', '.join(pareto['systems'])} on the first {pareto['iterations']} "
            "iterations of the same batches (bench/pareto.py). EPLB fills whole GPUs (the largest multiple of G "
            "within a point); the serverless systems scale up to it. Pareto: no other row is as fast and as cheap.")


def pareto_lines(pareto: dict[str, Any] | None) -> list[str]:
    """Markdown: the latency-memory sweep's table and plot ([] when it did not run)."""
    if not pareto:
        return []
    lines = ["## Latency-memory Pareto", "", pareto_caption(pareto), "",
             "| " + " | ".join(name for name, _ in PARETO_COLUMNS) + " |", "|" + "---|" * len(PARETO_COLUMNS)]
    lines += ["| " + " | ".join(row[key] for _, key in PARETO_COLUMNS) + " |" for row in pareto_rows(pareto)]
    return lines + ["", "![Latency-memory Pareto](pareto.png)", ""]


def _tables(result: BenchResult) -> list[str]:
    rows, lines = table_rows(result), []
    for title, columns in TABLES:
        lines += [f"## {title}", ""]
        lines.append("| " + " | ".join(name for name, _ in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(row[key] for _, key in columns) + " |")
        lines.append("")
    return lines


def _markdown_real(result: BenchResult) -> str:
    s = result.setting
    lines = ["# moeless bench (real mode)", "",
             f"- model {s['model']} executed by serve's runtime on {s['hardware']} with {s['gpus']} expert-parallel workers",
             f"- trace {s['trace']} ({s['requests']} requests), prompts `{s['dataset']}`, {s['batching']} batching", "",
             "Times are measured (each system's own run); costs as in serve.", ""]
    plots = ["![MoE-layer latency CDF](moe_latency_cdf.png)", "", "![Cost](cost.png)", ""]
    return "\n".join(lines + _tables(result) + simulator_check_lines(result.simulator_check) + plots)


def simulator_check_lines(check: dict[str, Any] | None) -> list[str]:
    """Markdown: each real run against the simulator's time model fitted on the other runs."""
    if not check:
        return []
    fit, hw = check["fit"], check["hardware"]
    lines = ["## Simulator vs real mode", "",
             f"The simulator's time model (`sim/timemodel.py`, roofline with host-copy exchange) fitted on the "
             f"real runs: {fit['row_us']:.2f} us per (token, expert) row ({hw['tflops']:.3f} TFLOP/s), "
             f"{fit['replica_us']:.1f} us per replica run, {fit['layer_fixed_us']:.0f} us per layer + "
             f"{fit['exchange_row_us']:.2f} us per row of exchange (all runs). Each system is predicted from its "
             "own recorded dispatches by the constants fitted on the other systems' runs only. "
             "The policy's decision (control plane, host Python) is measured but not simulated; "
             "errors are of the rest (the data plane). Stalls: calls the host held far longer than the model "
             "says (over 5 MADs of the residuals: preemption, garbage collection).", "",
             "| system | real MoE ms | of which decision | data plane ms | simulated ms | error of the mean | "
             "without stalls (stalls) | error of the median | median per-layer error |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in check["systems"].items():
        lines.append(f"| {name} | {row['real_ms']:.4f} | {row['control_ms']:.4f} | {row['data_plane_ms']:.4f} | "
                     f"{row['sim_ms']:.4f} | {row['error']:+.1%} | {row['error_without_stalls']:+.1%} "
                     f"({row['stalls']}) | {row['p50_error']:+.1%} | {row['median_abs_layer_error']:.1%} |")
    return lines + [""]


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def write_plots(result: BenchResult, out: Path) -> list[Path]:
    """moe_latency_cdf.png, cost.png, pareto.png when the sweep ran, scaling.png when the simulator reported
    live replicas over time; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = (("moe_latency_cdf.png", _latency_cdf, True), ("cost.png", _cost_bars, True),
             ("pareto.png", _pareto_plot, bool(result.pareto)), ("scaling.png", _scaling_plot, bool(result.timeline)))
    for name, draw, wanted in plots:
        if not wanted:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        draw(ax, result)
        ax.grid(alpha=0.3)
        written.append(write_bytes_atomic(out / name, _png(fig)))
        plt.close(fig)
    return written


def _latency_cdf(ax: Any, result: BenchResult) -> None:
    for name, times in result.moe_layer_s.items():
        values = np.sort(np.asarray(times) * 1e3)
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size, label=name)
    ax.set_xscale("log")
    measured = "measured, each system's own run" if result.mode == "real" else "same batches"
    ax.set_xlabel(f"MoE-layer latency (ms, {measured})")
    ax.set_ylabel("CDF")
    ax.legend(loc="lower right")  # a fixed corner: "best" scans every point of long CDFs (slow, and warns)



def _cost_bars(ax: Any, result: BenchResult) -> None:
    """Each system's costs, billed alike, over static EP's (the floor, `bound`, has none)."""
    names = [name for name, core in result.systems.items() if "cost" in core]
    static = result.systems["static"]["cost"]
    width = 0.27
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("gbs_live", "GB·s live"), ("gbs_per_invocation", "GB·s per invocation"),
                                      ("serverless_gpu_s", "GPU·s serverless"))):
        values = [result.systems[n]["cost"][key] / static[key] if static[key] else 0.0 for n in names]
        ax.bar(x + (k - 1) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("cost relative to static EP (billed alike)")
    ax.legend()


def _pareto_plot(ax: Any, result: BenchResult) -> None:
    """Mean MoE-layer latency against live GB·s, one line per system through its memory points."""
    rows = result.pareto["rows"]
    for name in result.pareto["systems"]:
        mine = [row for row in rows if row["system"] == name]
        ax.plot([row["gbs_live"] for row in mine], [row["moe_layer_ms"] for row in mine], marker="o", label=name)
        for row in mine:
            ax.annotate(str(row["replicas_per_layer"]), (row["gbs_live"], row["moe_layer_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("live GB·s (memory of live instances x lifetime)")
    ax.set_ylabel("mean MoE-layer latency (ms, same batches)")
    ax.set_title("replicas per layer at each point", fontsize=9)
    ax.legend()


SCALING_SYSTEMS = ("static", "eplb", "moeless-paper", "moeless")  # the systems scaling.png draws


def _scaling_plot(ax: Any, result: BenchResult) -> None:
    """Live replicas per layer over time (each system's own closed-loop run), the arrival rate on a second axis."""
    timeline = result.timeline
    rate = timeline["arrival_rate"]
    arrivals = ax.twinx()
    arrivals.bar(rate["t_s"], rate["requests_per_s"], width=rate["bin_s"], align="edge", color="0.85",
                 label=f"arrivals (requests/s, {rate['bin_s']:g}-s bins)")
    arrivals.set_ylabel("arrival rate (requests/s)")
    ax.set_zorder(arrivals.get_zorder() + 1)  # the replica lines over the arrival bars
    ax.patch.set_visible(False)
    for name in SCALING_SYSTEMS:
        series = timeline["systems"].get(name)
        if series and series["t_s"]:
            ax.step(series["t_s"], series["live_replicas_per_layer"], where="post", label=name)
    s = result.setting
    ax.set_xlabel(f"simulated time (s), {s['trace']}, {s['batching']} batching")
    ax.set_ylabel("live replicas per layer")
    ax.set_ylim(bottom=0)
    lines, names = ax.get_legend_handles_labels()
    bars, bar_names = arrivals.get_legend_handles_labels()
    ax.legend(lines + bars, names + bar_names, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8)
