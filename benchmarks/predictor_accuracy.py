"""Do moeless's load predictors beat the published ones and the history baselines on an unseen domain?

On a built-in model (default `tiny-mixtral`): profile each training domain (math: gsm8k; prose:
wikitext2, tinyshakespeare) and a domain left out of training (code: humaneval), every token's
router inputs recorded; train with `moeless train-predictor --profile GSM8K --profile WIKI
--profile SHAKESPEARE --eval-profile CODE`; report per layer, side by side in one run:
- token top-k recall at d=1: moeless vs the unmodified next gate (reused-gate) and the paper method;
- load error (TVD of per-batch load fractions): moeless vs EMA and last-iteration history;
- wall time of the whole training command and per-layer predict latency for 256 tokens on CPU.
Also the in-domain split (7:3 by request of the training profile) for reference.

    .venv/bin/python benchmarks/predictor_accuracy.py [--model tiny-mixtral] [--num-prompts 96]
        [--epochs 30] [--distances 1 2] [--threads 2] [--work DIR] [--json]

When the built-in model is not shipped it falls back to a random tiny Mixtral and says so: random
weights do not route like a trained model, so those figures mean nothing about real predictors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_DATASETS = ("gsm8k", "wikitext2", "tinyshakespeare")  # code (humaneval) is left out
HELD_OUT_DATASET = "humaneval"


def moeless(*args: str, threads: int) -> dict:
    """Run the CLI in a subprocess (as a user would) and parse its --json output."""
    env = {**os.environ, "MOELESS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "moeless_cli", *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def resolve_model(name: str, work: Path) -> tuple[str, bool]:
    """(model argument, is_builtin_trained). Falls back to a random tiny Mixtral."""
    from moeless_cli.models import builtin_names

    if name in builtin_names() or Path(name).is_dir():
        return name, True
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_checkpoint

    print(f"WARNING: built-in model {name!r} is not shipped; using a RANDOM tiny Mixtral. Random weights do not "
          "route like a trained model: the figures below say nothing about real predictors.", file=sys.stderr)
    path = make_tiny_checkpoint("mixtral", work / "random-mixtral", hidden_size=128, num_hidden_layers=6,
                                intermediate_size=256)
    return str(path), False


def predict_latency(predictor_path: Path, profile_path: Path, repeats: int = 300) -> dict[str, float]:
    """Median microseconds to predict one layer's load for 256 tokens, per method, on CPU."""
    import numpy as np
    import torch

    from moeless_cli.predictor import load_predictor
    from moeless_cli.profiling import load_profile

    torch.set_num_threads(1)
    profile = load_profile(profile_path)
    predictor = load_predictor(predictor_path, expected_config_hash=profile.config_hash)
    layer = predictor.layers(1)[0]
    hidden = torch.from_numpy(profile.router_inputs[:256, layer - 1].astype(np.float32))
    hidden = hidden.repeat((256 + hidden.shape[0] - 1) // hidden.shape[0], 1)[:256]  # [256, hidden]
    timings = {}
    for method in ("moeless", "paper"):
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict_layer_load(hidden, layer, 1, method)
            samples.append(time.perf_counter() - start)
        timings[method] = float(np.median(samples) * 1e6)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--num-prompts", type=int, default=96, help="prompts of the held-out domain, and of all training domains together")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--distances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for profiling and training")
    parser.add_argument("--work", type=Path, default=None, help="keep profiles and predictors here")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="moeless-predictor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model, trained = resolve_model(args.model, work)
    common = ["--model", model, "--batch-size", "8", "--max-new-tokens", str(args.max_new_tokens),
              "--router-samples", "10000000"]
    profiles = {}
    for dataset in (*TRAIN_DATASETS, HELD_OUT_DATASET):
        profiles[dataset] = work / f"profile-{dataset}"
        prompts = args.num_prompts if dataset == HELD_OUT_DATASET else args.num_prompts // len(TRAIN_DATASETS)
        doc = moeless("profile", *common, "--dataset", dataset, "--num-prompts", str(prompts),
                      "--out", str(profiles[dataset]), threads=args.threads)
        print(f"profiled {dataset}: {doc['tokens']} tokens, {doc['iterations']} iterations", file=sys.stderr)

    train_args = [a for name in TRAIN_DATASETS for a in ("--profile", str(profiles[name]))]
    train_args += [a for d in args.distances for a in ("--distance", str(d))] + ["--epochs", str(args.epochs)]
    started = time.perf_counter()
    cross = moeless("train-predictor", *train_args, "--eval-profile", str(profiles[HELD_OUT_DATASET]),
                    "--out", str(work / "cross.safetensors"), threads=args.threads)
    cross_wall = time.perf_counter() - started
    in_domain = moeless("train-predictor", *train_args, "--out", str(work / "in-domain.safetensors"), threads=args.threads)
    latency = predict_latency(work / "cross.safetensors", profiles[HELD_OUT_DATASET])
    results = {"model": args.model if trained else "random tiny mixtral (fallback)", "trained_model": trained,
               "train_datasets": list(TRAIN_DATASETS), "heldout_dataset": HELD_OUT_DATASET,
               "cross_domain": cross, "in_domain": in_domain, "train_command_wall_s": cross_wall,
               "predict_us_256_tokens": latency, "threads": args.threads}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


def report(results: dict) -> None:
    if not results["trained_model"]:
        print("NOTE: random-weight fallback model; these figures are not meaningful for trained models.\n")
    for title, key in (("held-out domain (code), trained on math + prose", "cross_domain"),
                       ("in-domain held-out requests (7:3 split)", "in_domain")):
        doc = results[key]
        print(f"== {results['model']}: {title}")
        print(f"{'layer':>5} {'d':>2} | {'recall: moeless':>15} {'paper':>6} {'reused':>6} | "
              f"{'TVD: moeless':>12} {'ema':>6} {'last':>6} {'reused':>6} | straggler moeless/ema | anchor")
        for e in doc["layers"]:
            m = e["methods"]
            print(f"{e['layer']:>5} {e['distance']:>2} | {m['moeless']['topk_recall']:>15.3f} "
                  f"{m['moeless-paper']['topk_recall']:>6.3f} {m['reused-gate']['topk_recall']:>6.3f} | "
                  f"{m['moeless']['load_tvd']:>12.3f} {m['ema']['load_tvd']:>6.3f} {m['last']['load_tvd']:>6.3f} "
                  f"{m['reused-gate']['load_tvd']:>6.3f} | {m['moeless']['straggler_recall']:>9.2f}/{m['ema']['straggler_recall']:.2f}"
                  f"            | {e['anchor']}")
        for d in sorted({e["distance"] for e in doc["layers"]}):
            rows = [e for e in doc["layers"] if e["distance"] == d]
            mean = lambda method, metric: sum(e["methods"][method][metric] for e in rows) / len(rows)  # noqa: E731
            wins = sum(e["methods"]["moeless"]["load_tvd"] < e["methods"]["ema"]["load_tvd"] for e in rows)
            print(f"   d={d}: mean recall moeless {mean('moeless', 'topk_recall'):.3f} vs reused-gate "
                  f"{mean('reused-gate', 'topk_recall'):.3f} (ratio {mean('moeless', 'topk_recall') / mean('reused-gate', 'topk_recall'):.3f}) "
                  f"vs paper {mean('moeless-paper', 'topk_recall'):.3f}; mean TVD moeless {mean('moeless', 'load_tvd'):.3f} "
                  f"vs ema {mean('ema', 'load_tvd'):.3f}; moeless beats ema on {wins}/{len(rows)} layers")
        split = doc["split"]
        print(f"   eval: {split['test_requests']} requests, {split['test_tokens']} tokens, {split['test_batches']} batches\n")
    lat = results["predict_us_256_tokens"]
    print(f"train-predictor command wall time (profile load, model load, training, scoring): "
          f"{results['train_command_wall_s']:.1f} s on {results['threads']} threads")
    print(f"predict one layer, 256 tokens, 1 CPU thread: moeless {lat['moeless']:.0f} us, paper {lat['paper']:.0f} us")


if __name__ == "__main__":
    main()
