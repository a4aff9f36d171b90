"""Per-layer expert-load skew of the built-in models per domain, beside the real OLMoE-1B-7B counts.

    .venv/bin/python scripts/model_skew_report.py                  # both sources below
    .venv/bin/python scripts/model_skew_report.py --source profile # only `moeless profile` runs

Sources of the built-in models' loads:
  profile  `moeless profile` of each model on each built-in dataset (prefill + greedy decode),
           summed over iterations (the profiles are kept under build/skew-profiles/);
  hooks    forward hooks on the training script's held-out split of each domain (text the
           models never trained on; the built-in datasets overlap the training text).

Skew of one layer's load vector (tokens routed to each expert): max/mean (1.0 = perfectly even,
what a static placement is sized by) and the Gini coefficient (0 = even, 1 = one expert takes all).
Figures are summarised over layers as mean [min-max]; "idle experts" counts, per layer, experts
that get under 1% of the mean load. Prints a Markdown table (docs/models.md
quotes it) and writes the full per-layer figures to --out as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
OLMOE_CSV = REPO / "src/moeless_cli/data/loads/olmoe-1b-7b/olmoe_expert_counts.csv"
OLMOE_SHAPE = "4x512"  # 16 steps x 2048 tokens per corpus
SEQ_LEN = 256


def gini(load: np.ndarray) -> float:
    """load: [experts] non-negative counts. Gini coefficient; 0.0 for an idle layer."""
    values = np.sort(np.asarray(load, dtype=np.float64))  # [experts], ascending
    total = values.sum()
    if total <= 0:
        return 0.0
    n = values.size
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * values).sum() / (n * total))


def max_over_mean(load: np.ndarray) -> float:
    """load: [experts]. max / mean; 1.0 for an idle layer."""
    mean = float(np.mean(load))
    return float(np.max(load)) / mean if mean > 0 else 1.0


def layer_skew(loads: np.ndarray) -> dict:
    """loads: [layers, experts]. Per-layer max/mean and Gini, plus their mean/min/max over layers."""
    mm = [max_over_mean(row) for row in loads]
    gi = [gini(row) for row in loads]
    idle = [int((row < 0.01 * row.mean()).sum()) for row in loads]  # experts under 1% of the mean load
    return {
        "max_over_mean": [round(v, 3) for v in mm],
        "gini": [round(v, 3) for v in gi],
        "idle_experts": idle,
        "summary": {
            "idle_experts": round(float(np.mean(idle)), 1),
            "max_over_mean": [round(float(np.mean(mm)), 2), round(min(mm), 2), round(max(mm), 2)],
            "gini": [round(float(np.mean(gi)), 3), round(min(gi), 3), round(max(gi), 3)],
        },
    }


def domain_overlap(loads_by_domain: dict[str, np.ndarray]) -> float:
    """Mean over layers and domain pairs of the cosine similarity of load vectors (1 = same routing).

    loads_by_domain: {domain: [layers, experts]}.
    """
    names = sorted(loads_by_domain)
    sims = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = loads_by_domain[a], loads_by_domain[b]  # [layers, experts]
            num = (x * y).sum(axis=1)
            den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            sims.extend((num / np.maximum(den, 1e-12)).tolist())
    return round(float(np.mean(sims)), 3) if sims else float("nan")


def olmoe_loads() -> dict[str, np.ndarray]:
    """Real OLMoE-1B-7B counts per corpus: {corpus: [16 layers, 64 experts]}."""
    from moeless_cli.loads_csv import read_loads_csv

    return {c: read_loads_csv(OLMOE_CSV, {"corpus": c, "shape": OLMOE_SHAPE}) for c in ("prose", "code", "math")}


def hook_loads(model_name: str, streams: dict[str, np.ndarray], windows: int) -> tuple[dict[str, np.ndarray], int]:
    """Route held-out text through a built-in model, counting top-k picks with router forward hooks.

    streams: {domain: [n_tokens]}. Returns ({domain: [moe_layers, experts]} routing counts, top_k).
    """
    import torch

    from moeless_cli.models import load_moe_model

    loaded = load_moe_model(model_name)
    out = {}
    for domain, stream in streams.items():
        counts = np.zeros((loaded.num_moe_layers, loaded.num_experts), dtype=np.int64)

        def make_hook(layer: int):
            def hook(_module, _inputs, output):
                picked = output[loaded.adapter.indices_position].reshape(-1)  # [tokens * top_k]
                counts[layer] += np.bincount(picked.numpy(), minlength=loaded.num_experts)
            return hook

        handles = [loaded.router(i).register_forward_hook(make_hook(i)) for i in range(loaded.num_moe_layers)]
        count = min(windows, len(stream) // SEQ_LEN)
        tokens = torch.from_numpy(stream[: count * SEQ_LEN].reshape(count, SEQ_LEN).astype(np.int64))
        with torch.no_grad():
            for start in range(0, count, 8):
                loaded.model(input_ids=tokens[start : start + 8])
        for handle in handles:
            handle.remove()
        out[domain] = counts
    return out, loaded.top_k


PROFILE_DATASETS = {"wikitext2": "prose", "tinyshakespeare": "prose", "humaneval": "code", "gsm8k": "math"}


def profile_loads(model_name: str, out_root: Path, num_prompts: int) -> tuple[dict[str, np.ndarray], int]:
    """Run `moeless profile` on each built-in dataset; returns ({dataset: [layers, experts]}, top_k)."""
    import subprocess

    from moeless_cli.profiling import load_profile

    loads, top_k = {}, 0
    for dataset, domain in PROFILE_DATASETS.items():
        out = out_root / f"{model_name}-{dataset}"
        cmd = [sys.executable, "-m", "moeless_cli", "profile", "--model", model_name, "--dataset", dataset,
               "--num-prompts", str(num_prompts), "--batch-size", "16", "--max-new-tokens", "8",
               "--max-prompt-tokens", "256", "--out", str(out), "--json"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        profile = load_profile(out)
        loads[f"{dataset} ({domain})"] = np.asarray(profile.load).sum(axis=0)  # [layers, experts]
        top_k = int(profile.top_k)
    return loads, top_k


def heldout_streams(data_dir: Path, model_name: str) -> dict[str, np.ndarray]:
    """The training script's held-out split of each domain, tokenized with the model's tokenizer."""
    from builtin_data import DOMAINS, load_domains
    from builtin_tokenizer import encode_stream
    from transformers import AutoTokenizer

    from moeless_cli.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name))
    domains = load_domains(data_dir)
    return {d: encode_stream(tokenizer, domains[d].heldout) for d in DOMAINS}


def markdown(report: dict) -> str:
    lines = ["| model | source | text (domain) | routed tokens | max/mean: mean [min-max] over layers "
             "| Gini: mean [min-max] | idle experts/layer |", "|---|---|---|---|---|---|---|"]
    for key, entry_set in report["models"].items():
        model, _, source = key.partition(" / ")
        for domain, entry in entry_set["domains"].items():
            mm, gi = entry["summary"]["max_over_mean"], entry["summary"]["gini"]
            lines.append(f"| {model} | {source} | {domain} | {entry['tokens']:,} "
                         f"| {mm[0]:.2f} [{mm[1]:.2f}-{mm[2]:.2f}] | {gi[0]:.3f} [{gi[1]:.3f}-{gi[2]:.3f}] "
                         f"| {entry['summary']['idle_experts']:.1f} |")
    lines.append("")
    lines.append("| model | source | mean cosine similarity of per-layer loads between texts (1 = domain-blind) |")
    lines.append("|---|---|---|")
    for key, entry_set in report["models"].items():
        model, _, source = key.partition(" / ")
        lines.append(f"| {model} | {source} | {entry_set['domain_overlap']:.3f} |")
    return "\n".join(lines)


def summarise(loads_by_domain: dict[str, np.ndarray], top_k: int, source: str) -> dict:
    """Skew per text, plus "all (sum)": the texts' loads added up (a mixed-traffic view)."""
    with_total = {**loads_by_domain, "all (sum)": sum(loads_by_domain.values())}
    return {
        "source": source,
        "domains": {d: {"tokens": int(l[0].sum() // top_k), **layer_skew(l)} for d, l in with_total.items()},
        "domain_overlap": domain_overlap(loads_by_domain),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="tiny-mixtral,tiny-olmoe")
    parser.add_argument("--source", choices=("profile", "hooks", "both"), default="both")
    parser.add_argument("--windows", type=int, default=128, help="held-out windows of 256 tokens per domain")
    parser.add_argument("--num-prompts", type=int, default=128, help="prompts per `moeless profile` run")
    parser.add_argument("--profiles-dir", type=Path, default=REPO / "build" / "skew-profiles")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "models-skew.json")
    args = parser.parse_args(argv)

    import torch

    from moeless_cli.fileio import write_json_atomic

    torch.set_num_threads(1)
    report = {"models": {}}
    for name in [n for n in args.models.split(",") if n]:
        if args.source in ("profile", "both"):
            loads, top_k = profile_loads(name, args.profiles_dir, args.num_prompts)
            report["models"][f"{name} / moeless profile"] = summarise(loads, top_k, "moeless profile, built-in datasets")
        if args.source in ("hooks", "both"):
            loads, top_k = hook_loads(name, heldout_streams(args.data_dir, name), args.windows)
            report["models"][f"{name} / held-out hooks"] = summarise(loads, top_k, "forward hooks, held-out split")
    report["models"]["OLMoE-1B-7B (real) / Soup probe 4x512"] = summarise(
        olmoe_loads(), 8, f"{OLMOE_CSV.name} shape {OLMOE_SHAPE}")
    write_json_atomic(args.out, report)
    print(markdown(report))


if __name__ == "__main__":
    main()
