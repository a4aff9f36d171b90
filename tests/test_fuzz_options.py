"""Fuzz every numeric option of every command with edge values: 0, -1, fractions, NaN, inf, 1e308,
1e400, 2e9, 10^23, `true`, empty, hex, non-ASCII digits, and whatever else hypothesis draws. Each
must end in exit 0 or one clean `error:` line (exit 1-2): no traceback, no hang, no file outside the
requested output touched (tests/fuzzing.py).

Commands whose valid runs take long are given an input that fails right after the options are
checked (a model that does not exist, a plan made for another model, a routing model that does not
fit the preset), so each example takes a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzzing import fuzz_settings, number_text, run_cli, workspace
from hypothesis import example, given
from tiny_models import cached_tiny_checkpoint, single_thread_torch

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A loads CSV, its plan, the plan relabelled for another model, and a recorded profile."""
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    def ok(*args):
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    root = tmp_path_factory.mktemp("fuzz-options")
    loads = root / "loads.csv"
    loads.write_text("layer,expert,count\n" + "".join(f"{l},{e},{(5 * l + 3 * e) % 7 + 1}\n"
                                                      for l in range(2) for e in range(4)))
    ok("plan", "--loads", loads, "--gpus", "2", "--out", root / "plan.json")
    other = json.loads((root / "plan.json").read_text()) | {"config_hash": "feedfacefeedface", "model_id": "other"}
    (root / "other-plan.json").write_text(json.dumps(other))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"prompt {i} " + "abc " * (1 + i)}) + "\n" for i in range(4)))
    (root / "trace.csv").write_text("timestamp,input_tokens,output_tokens\n0,5,3\n0.5,7,2\n")
    model = cached_tiny_checkpoint("mixtral")
    ok("profile", "--model", model, "--dataset", prompts, "--num-prompts", "4", "--batch-size", "2",
       "--max-new-tokens", "1", "--max-prompt-tokens", "12", "--router-samples", "500", "--out", root / "profile")
    return {"loads": loads, "plan": root / "plan.json", "other_plan": root / "other-plan.json",
            "profile": root / "profile", "model": model, "trace": root / "trace.csv"}


# command -> (its fixed arguments, the outputs it may write, its numeric options). `{x}` names an input.
COMMANDS: dict[str, tuple[list[str], tuple[str, ...], list[str]]] = {
    "plan": (["plan", "--loads", "{loads}", "--solver", "static", "--out", "out.json"], ("out.json",),
             ["--gpus", "--nodes", "--groups", "--slots-per-gpu", "--replica-budget", "--time-limit",
              "--intra-node-gbps", "--inter-node-gbps"]),
    "plan memory": (["plan", "--loads", "{loads}", "--gpus", "2", "--solver", "static", "--out", "out.json",
                     "--expert-mb", "1"], ("out.json",), ["--gpu-memory-gb"]),
    "plan expert size": (["plan", "--loads", "{loads}", "--gpus", "2", "--solver", "static", "--out", "out.json",
                          "--gpu-memory-gb", "1"], ("out.json",), ["--expert-mb"]),
    "plan export": (["plan", "export", "{plan}", "--out", "out.json"], ("out.json",), ["--dense-layers"]),
    "profile import": (["profile", "import", "{loads}", "--out", "prof"], ("prof",), ["--num-experts", "--top-k"]),
    "profile": (["profile", "--model", "no-such-model", "--out", "prof"], ("prof",),
                ["--num-prompts", "--batch-size", "--max-new-tokens", "--max-prompt-tokens", "--router-samples",
                 "--seed", "--threads"]),
    "train-predictor": (["train-predictor", "--profile", "{profile}", "--model", "no-such-model", "--out", "p.st"],
                        ("p.st",), ["--distance", "--accuracy-threshold", "--epochs", "--seed"]),
    "serve": (["serve", "--model", "{model}", "--trace", "{trace}", "--plan", "{other_plan}", "--out", "report.json"],
              ("report.json",),
              ["--workers", "--time-scale", "--max-requests", "--max-output-tokens", "--max-prompt-tokens",
               "--token-budget", "--max-batch", "--keep-alive", "--gpu-price-per-hour", "--distance"]),
    "bench": (["bench", "--model", "tiny-olmoe", "--preset", "mixtral-8x7b", "--mode", "sim", "--trace", "{trace}",
               "--out", "bench-out"],
              ("bench-out",), ["--gpus", "--max-requests", "--time-scale", "--keep-alive", "--num-prompts", "--epochs"]),
}
CASES = [(command, option) for command, (_, _, options) in COMMANDS.items() for option in options]


def _with_edges(test):
    """Every option also gets the values users and broken scripts give most (hypothesis @example)."""
    for value in EDGES:
        test = example(value=value)(test)
    return test


EDGES = ["0", "-1", "nan", "inf", "1e400", "99999999999999999999999", "1.5", "true", ""]


@pytest.mark.parametrize("command,option", CASES, ids=[f"{c}:{o}" for c, o in CASES])
@fuzz_settings(4)
@_with_edges
@given(value=number_text)
def test_numeric_option(inputs, command, option, value):
    fixed, outputs, _ = COMMANDS[command]
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in fixed]
    with workspace() as root:
        run_cli(f"option {command} {option}", [*args, f"{option}={value}"], root, outputs).check()


# ---- every path option -------------------------------------------------------------------------
# option under test -> the rest of its command and the outputs it may write; {path} is the value tried.
PATH_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "plan --loads": (["plan", "--loads", "{path}", "--gpus", "2", "--solver", "static", "--out", "out.json"], ("out.json",)),
    "plan --profile": (["plan", "--profile", "{path}", "--gpus", "2", "--solver", "static", "--out", "out.json"],
                       ("out.json",)),
    "plan --previous-plan": (["plan", "--loads", "{loads}", "--gpus", "2", "--previous-plan", "{path}", "--out",
                              "out.json"], ("out.json",)),
    "plan --out": (["plan", "--loads", "{loads}", "--gpus", "2", "--solver", "static", "--out", "{path}"], ()),
    "plan export PLAN": (["plan", "export", "{path}", "--out", "out.json"], ("out.json",)),
    "plan export --profile": (["plan", "export", "{plan}", "--format", "sglang-logical-count", "--profile", "{path}",
                               "--out", "out.json"], ("out.json",)),
    "plan export --out": (["plan", "export", "{plan}", "--out", "{path}"], ()),
    "profile import FILE": (["profile", "import", "{path}", "--out", "prof"], ("prof",)),
    "profile import --out": (["profile", "import", "{loads}", "--out", "{path}"], ()),
    "profile --dataset": (["profile", "--dataset", "{path}", "--model", "no-such-model", "--out", "prof"], ("prof",)),
    "profile --model": (["profile", "--model", "{path}", "--num-prompts", "1", "--out", "prof"], ("prof",)),
    "profile --out": (["profile", "--model", "no-such-model", "--out", "{path}"], ()),
    "train-predictor --profile": (["train-predictor", "--profile", "{path}", "--out", "p.st"], ("p.st",)),
    "train-predictor --eval-profile": (["train-predictor", "--profile", "{profile}", "--eval-profile", "{path}",
                                       "--model", "no-such-model", "--out", "p.st"], ("p.st",)),
    "train-predictor --out": (["train-predictor", "--profile", "{profile}", "--model", "no-such-model", "--out",
                               "{path}"], ()),
    "serve --trace": (["serve", "--model", "{model}", "--trace", "{path}", "--plan", "{other_plan}"], ()),
    "serve --predictor": (["serve", "--model", "{model}", "--trace", "{trace}", "--predictor", "{path}", "--plan",
                           "{other_plan}"], ()),
    "serve --plan": (["serve", "--model", "{model}", "--trace", "{trace}", "--plan", "{path}", "--max-requests", "1"], ()),
    "serve --model": (["serve", "--model", "{path}", "--trace", "{trace}", "--plan", "{other_plan}"], ()),
    "serve --out": (["serve", "--model", "{model}", "--trace", "{trace}", "--plan", "{other_plan}", "--out", "{path}"],
                    ()),
    "bench --trace": (["bench", "--trace", "{path}", "--model", "tiny-olmoe", "--preset", "mixtral-8x7b", "--mode",
                       "sim", "--out", "bo"], ("bo",)),
    "bench --model": (["bench", "--model", "{path}", "--mode", "sim", "--trace", "{trace}", "--out", "bo"], ("bo",)),
    "bench --out": (["bench", "--model", "tiny-olmoe", "--preset", "mixtral-8x7b", "--mode", "sim", "--trace", "{trace}",
                     "--out", "{path}"], ()),
}
# Paths a user may give by mistake: too long, missing, a folder, a pipe, a text file, through a file,
# empty, the current folder and those above it, a symlink to a folder and one to nothing yet.
PATH_VALUES = ["y" * 300, "nope/missing.json", "precious", "pipe", "precious/notes.txt", "counts.csv/x", "", ".", "..",
               "/", "link-to-precious", "dangling-link"]
LINK_TARGETS = {"link-to-precious": "precious", "dangling-link": "precious/new.json"}


@pytest.mark.parametrize("option", sorted(PATH_OPTIONS))
def test_path_option(inputs, option):
    import os

    fixed, outputs = PATH_OPTIONS[option]
    for value in PATH_VALUES:
        with workspace() as root:
            (root / "counts.csv").write_text("layer,expert,count\n0,0,1\n")
            os.mkfifo(root / "pipe")
            os.symlink("precious", root / "link-to-precious")
            os.symlink("precious/new.json", root / "dangling-link")
            values = {k: str(v) for k, v in inputs.items()} | {"path": value}
            args = [a.format(**values) for a in fixed]
            # The value itself when it is the output, except the user's folder (never replaced).
            written = (value, LINK_TARGETS.get(value, value)) if "{path}" in fixed[-1] else ()
            may_write = outputs + tuple(w for w in written if w != "precious")
            run_cli(f"path {option}", args, root, may_write).check()
