"""Fuzz every loader through the CLI: plans, profiles, predictors, loads CSVs, traces, datasets and
engine dumps, each a valid file broken in one place (a value swapped for NaN, inf, a huge or
negative number, a bool, a string; a key removed; the file cut short or overwritten with junk) or
generated from scratch. Every input must end in exit 0 or one clean `error:` line (exit 1-2): no
traceback, no hang, no file outside the requested output touched (tests/fuzzing.py).

Where a valid input would start minutes of work, the command is given a second input that fails
right after the one under test is read (a plan made for another model, a model that does not exist),
so every example takes a fraction of a second.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import (
    EDGE_NUMBERS,
    dumps,
    edge_values,
    fuzz_settings,
    mutate_bytes,
    mutate_json,
    run_cli,
    workspace,
)
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import cached_tiny_checkpoint, single_thread_torch

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread_torch():
        yield


def _ok(args: list) -> None:
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs of every kind, made once: the fuzz tests break copies of them."""
    root = tmp_path_factory.mktemp("fuzz-assets")
    model = cached_tiny_checkpoint("mixtral")
    loads = root / "loads.csv"
    loads.write_text("layer,expert,count\n" + "".join(f"{l},{e},{(7 * l + 3 * e) % 11 + 1}\n"
                                                      for l in range(2) for e in range(4)))
    _ok(["plan", "--loads", loads, "--gpus", "2", "--out", root / "plan.json"])
    other = json.loads((root / "plan.json").read_text()) | {"config_hash": "feedfacefeedface", "model_id": "other"}
    (root / "other-plan.json").write_text(json.dumps(other))
    _ok(["profile", "import", loads, "--top-k", "2", "--out", root / "imported"])
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"request {i}: " + "lorem ipsum " * (1 + i % 3)}) + "\n"
                               for i in range(6)))
    _ok(["profile", "--model", model, "--dataset", prompts, "--num-prompts", "6", "--batch-size", "3",
         "--max-new-tokens", "2", "--max-prompt-tokens", "16", "--router-samples", "1000", "--out", root / "recorded"])
    _ok(["train-predictor", "--profile", root / "recorded", "--epochs", "1", "--out", root / "predictor.safetensors"])
    (root / "trace.csv").write_text("timestamp,input_tokens,output_tokens\n0,5,3\n0.5,7,2\n1.25,4,4\n")
    return {"root": root, "model": model, "loads": loads, "plan": root / "plan.json", "other_plan": root / "other-plan.json",
            "imported": root / "imported", "recorded": root / "recorded", "predictor": root / "predictor.safetensors",
            "trace": root / "trace.csv"}


# ---- arrays ------------------------------------------------------------------------------------
def mutate_array(data: st.DataObject, array: np.ndarray) -> np.ndarray | None:
    """One array broken: an edge value written in, another dtype, another shape, emptied, or gone (None)."""
    action = data.draw(st.sampled_from(["value", "value", "dtype", "shape", "empty", "drop"]), label="array action")
    if action == "drop":
        return None
    if action == "empty":
        return array[:0]
    if action == "shape":
        return array.reshape(-1) if array.ndim > 1 else array.reshape(1, -1)
    if action == "dtype":
        return array.astype(data.draw(st.sampled_from([np.int8, np.uint8, np.int64, np.float16, np.float64, np.bool_])))
    value = data.draw(st.sampled_from(EDGE_NUMBERS), label="array value")
    out = array.astype(np.float64) if array.dtype.kind == "f" or not float(value).is_integer() else array.astype(np.int64)
    if out.size:
        with np.errstate(all="ignore"):
            flat = out.reshape(-1)
            index = data.draw(st.integers(0, flat.size - 1), label="index")
            try:
                flat[index] = value
            except (OverflowError, ValueError):
                flat[index] = -1
    return out


def mutate_safetensors(data: st.DataObject, path: Path) -> None:
    """Break one array of a safetensors file (keeping its metadata), or its bytes."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    if data.draw(st.integers(0, 4), label="bytes?") == 0:
        path.write_bytes(mutate_bytes(data, path.read_bytes()))
        return
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    arrays = load_file(str(path))
    name = data.draw(st.sampled_from(sorted(arrays)), label="array")
    broken = mutate_array(data, arrays[name])
    if broken is None:
        del arrays[name]
    else:
        arrays[name] = np.ascontiguousarray(broken)
    save_file(arrays, str(path), metadata=metadata)


# ---- plans, profiles, predictors ---------------------------------------------------------------
@fuzz_settings(30)
@given(data=st.data())
def test_plan_files(assets, data):
    raw = assets["plan"].read_bytes()
    raw = dumps(mutate_json(data, json.loads(raw))) if data.draw(st.booleans()) else mutate_bytes(data, raw)
    fmt = data.draw(st.sampled_from(["sglang", "vllm", "deepseek", "sglang-logical-count"]))
    with workspace() as root:
        (root / "plan.json").write_bytes(raw)
        if data.draw(st.booleans()):
            args = ["plan", "export", "plan.json", "--format", fmt, "--out", "out.json"]
        else:
            args = ["plan", "--loads", assets["loads"], "--gpus", "2", "--previous-plan", "plan.json", "--out", "out.json"]
        run_cli("plan files", args, root, ("out.json",)).check()


@fuzz_settings(40)
@given(data=st.data())
def test_profiles(assets, data):
    source = assets[data.draw(st.sampled_from(["imported", "recorded"]))]
    with workspace() as root:
        shutil.copytree(source, root / "prof")
        target = root / "prof" / data.draw(st.sampled_from(sorted(p.name for p in source.iterdir())))
        if target.suffix == ".json":
            raw = target.read_bytes()
            target.write_bytes(dumps(mutate_json(data, json.loads(raw))) if data.draw(st.booleans())
                               else mutate_bytes(data, raw))
        else:
            mutate_safetensors(data, target)
        spares = ["--spares", "--solver", "ilp", "--time-limit", "5"] if data.draw(st.booleans()) else ["--solver", "static"]
        args = ["plan", "--profile", "prof", "--gpus", "2", *spares, "--out", "out.json"]
        run_cli("profiles", args, root, ("out.json",)).check()


@fuzz_settings(30)
@given(data=st.data())
def test_predictors(assets, data):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with workspace() as root:
        path = root / "pred.safetensors"
        shutil.copy(assets["predictor"], path)
        if data.draw(st.booleans()):
            with safe_open(str(path), framework="numpy") as f:
                metadata = dict(f.metadata())
            manifest = json.loads(metadata["moeless_predictor"])
            metadata["moeless_predictor"] = dumps(mutate_json(data, manifest)).decode()
            save_file(load_file(str(path)), str(path), metadata=metadata)
        else:
            mutate_safetensors(data, path)
        # A valid predictor goes on to the plan, made for another model: refused before loading weights.
        args = ["serve", "--model", assets["model"], "--predictor", "pred.safetensors", "--plan", assets["other_plan"],
                "--trace", assets["trace"], "--max-requests", "1", "--out", "report.json"]
        run_cli("predictors", args, root, ("report.json",)).check()


# ---- loads CSVs and traces -------------------------------------------------------------------------
edge_cells = st.sampled_from(["0", "1", "7", "-1", "2.5", "1e308", "1e400", "nan", "inf", "-inf", "2e9", "2000000000",
                              "99999999999999999999", "true", "", " 3 ", "0x10", "\u0663"])
small_counts = st.integers(0, 300).map(str)
csv_cells = st.one_of(edge_cells, edge_cells, st.text(max_size=4))


def _csv_text(data: st.DataObject, header: list[str], cells: st.SearchStrategy) -> str:
    """A CSV of small counts with, most times, one cell swapped for an edge value (`cells`) and
    sometimes a row a cell short or long; Excel's BOM and CRLF line ends sometimes."""
    width = len(header)
    rows = data.draw(st.lists(st.lists(small_counts, min_size=width, max_size=width), min_size=1, max_size=6))
    if data.draw(st.integers(0, 3)):
        row = data.draw(st.integers(0, len(rows) - 1), label="row")
        rows[row][data.draw(st.integers(0, width - 1), label="column")] = data.draw(cells, label="cell")
    if not data.draw(st.integers(0, 5)):
        rows.append(data.draw(st.lists(small_counts, min_size=width - 1, max_size=width + 1)))
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    bom = data.draw(st.sampled_from(["", "\ufeff"]))
    return bom + newline.join(",".join(r) for r in [header, *rows]) + newline


@fuzz_settings(40)
@given(data=st.data())
def test_loads_csvs(assets, data):
    header = data.draw(st.sampled_from([["layer", "expert", "count"]] * 4 + [["layer", "expert", "count", "corpus"],
                                        ["expert", "count"], ["Layer", "expert", "count"]]))
    text = _csv_text(data, header, csv_cells)
    with workspace() as root:
        (root / "loads.csv").write_bytes(text.encode("utf-8", "surrogatepass")
                                         if data.draw(st.integers(0, 9)) else mutate_bytes(data, text.encode()))
        if data.draw(st.booleans()):
            args = ["profile", "import", "loads.csv", "--out", "prof"]
            outputs = ("prof",)
        else:
            args = ["plan", "--loads", "loads.csv", "--gpus", "2", "--solver", "static", "--out", "out.json"]
            outputs = ("out.json",)
        run_cli("loads CSVs", args, root, outputs).check()


trace_values = st.one_of(st.integers(0, 3000), st.integers(0, 3000), edge_values, st.integers(-3, 3000), st.floats(-1e12, 1e12),
                         st.sampled_from(["2023-11-16 18:15:46.6805900", "2023-11-16T18:15:47", "yesterday", "1e308",
                                          "-1e308", "inf", "nan", "9999-12-31", "0001-01-01"]))
trace_keys = st.sampled_from(["timestamp", "input_tokens", "output_tokens", "TIMESTAMP", "ContextTokens",
                              "GeneratedTokens", "arrival_time", "x"])


@fuzz_settings(40)
@given(data=st.data())
def test_traces(assets, data):
    jsonl = data.draw(st.booleans())
    if jsonl:
        request = st.fixed_dictionaries({"timestamp": trace_values, "input_tokens": trace_values,
                                         "output_tokens": trace_values})
        rows = data.draw(st.lists(st.one_of(request, request, request, edge_values,
                                            st.dictionaries(trace_keys, trace_values, min_size=2, max_size=4)),
                                  min_size=0, max_size=5))
        text = "\n".join(json.dumps(r, allow_nan=True) for r in rows) + "\n"
    else:
        header = data.draw(st.sampled_from([["timestamp", "input_tokens", "output_tokens"]] * 3 +
                                           [["TIMESTAMP", "ContextTokens", "GeneratedTokens"], ["timestamp", "x"]]))
        text = _csv_text(data, header, trace_values.map(str))
    name = "trace.jsonl" if jsonl else "trace.csv"
    time_scale = data.draw(st.sampled_from(["1"] * 5 + ["1e-300", "1e300", "0.001"]))
    with workspace() as root:
        (root / name).write_text(text)
        # A valid trace goes on to the plan, made for another model: refused before loading weights.
        args = ["serve", "--model", assets["model"], "--trace", name, "--time-scale", time_scale, "--plan",
                assets["other_plan"], "--out", "report.json"]
        run_cli("traces", args, root, ("report.json",)).check()


# ---- datasets ----------------------------------------------------------------------------------
dataset_values = st.one_of(edge_values, st.text(max_size=20), st.lists(st.dictionaries(st.sampled_from(["value", "from"]),
                                                                                        st.text(max_size=8)), max_size=2))


@fuzz_settings(12)
@given(data=st.data())
def test_datasets(assets, data):
    suffix = data.draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet", ".xml"]))
    rows = data.draw(st.lists(st.dictionaries(st.sampled_from(["text", "prompt", "question", "conversations", "domain",
                                                               "other"]), dataset_values, max_size=3), max_size=4))
    if suffix in (".jsonl", ".json"):
        raw = "\n".join(json.dumps(r, allow_nan=True) for r in rows).encode()
    elif suffix == ".csv":
        raw = ("text,domain\n" + "".join(f"{json.dumps(str(r.get('text', '')))},{r.get('domain', '')}\n"
                                         for r in rows)).encode()
    else:
        raw = data.draw(st.binary(max_size=64)) if suffix != ".txt" else data.draw(st.text(max_size=64)).encode()
    if data.draw(st.integers(0, 4)) == 0:
        raw = mutate_bytes(data, raw or b"x")
    text_field = data.draw(st.sampled_from([[], ["--text-field", "text"], ["--text-field", "conversations.0.value"],
                                            ["--text-field", "nope.1"]]))
    with workspace() as root:
        (root / f"data{suffix}").write_bytes(raw)
        # A valid dataset goes on to the model, which does not exist: refused before any work.
        args = ["profile", "--dataset", f"data{suffix}", *text_field, "--model", "no-such-model", "--num-prompts", "2",
                "--out", "prof"]
        run_cli("datasets", args, root, ("prof",)).check()


# ---- engine dumps ------------------------------------------------------------------------------
def _engine_records() -> dict[str, dict]:
    """Valid SGLang (stat, per_pass, per_token) and vLLM (physical window, logical window) records."""
    layers, experts, slots = 3, 4, 6
    phy2log = torch.tensor([[0, 1, 2, 3, 0, 1]] * layers)
    counts = torch.randint(0, 9, (4, layers, experts))
    counts[:, 0] = 0  # a dense layer
    ids = torch.full((layers, 3, 8), -1, dtype=torch.int32)
    ids[1:, :, :2] = torch.randint(0, slots, (layers - 1, 3, 2), dtype=torch.int32)
    token = {"forward_pass_id": 0, "rank": 0, "input_ids": [5, 6, 7], "positions": [0, 1, 2],
             "extend_seq_lens": [2, 1], "forward_mode": 1, "topk_ids_of_layer": ids,
             "global_physical_count": torch.zeros(layers, slots, dtype=torch.int32)}
    per_pass = [{"forward_pass_id": i, "rank": 0, "global_physical_count": torch.randint(0, 5, (layers, slots))}
                for i in range(3)]
    return {
        "sglang-stat": {"rank": 0, "logical_count": counts},
        "sglang-per-pass": {"records": per_pass, "last_physical_to_logical_map": phy2log},
        "sglang-per-token": {"records": [token], "last_physical_to_logical_map": phy2log},
        "vllm-window": {"expert_load_window": torch.randint(0, 5, (4, layers, slots)),
                        "physical_to_logical_map": phy2log, "expert_load_window_step": torch.tensor(1)},
        "vllm-logical": {"load_window_cpu": torch.randint(0, 5, (4, layers, experts)).float()},
    }


def _record_paths(record) -> list[tuple]:
    paths = [()]
    items = record.items() if isinstance(record, dict) else enumerate(record) if isinstance(record, list) else []
    for key, value in items:
        paths += [(key, *rest) for rest in _record_paths(value)]
    return paths


record_values = st.one_of(edge_values, st.sampled_from([
    torch.tensor([float("nan")]), torch.full((3, 4), float("inf")), torch.full((4, 3, 4), -3),
    torch.full((4, 3, 6), 2**40), torch.zeros(0), torch.zeros(2, 2, 2, 2), torch.tensor(True),
    torch.full((3, 6), 10**6), torch.tensor([[0, 1], [2, 3]]), torch.zeros(1, 3, 8, dtype=torch.int64) - 5,
    "string", [None], [[1.5, 2.5]]]))


def _save_record(record: dict, path: Path) -> None:
    if path.suffix == ".pt":
        torch.save(record, path)
    elif path.suffix == ".npz":
        arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=object if v is None else None))
                  for k, v in record.items() if not isinstance(v, list) or k != "records"}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path.write_bytes(buffer.getvalue())
    else:
        def plain(v):
            return v.tolist() if isinstance(v, torch.Tensor) else [plain(x) for x in v] if isinstance(v, list) else \
                {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v
        path.write_text(json.dumps(plain(record), allow_nan=True))


@fuzz_settings(40)
@given(data=st.data())
def test_engine_dumps(assets, data):
    kind = data.draw(st.sampled_from(sorted(_engine_records())))
    record = _engine_records()[kind]
    path = data.draw(st.sampled_from(_record_paths(record)[1:]))
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.integers(0, 3)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(record_values)
    suffix = data.draw(st.sampled_from([".pt", ".pt", ".npz", ".json"] if kind.startswith("vllm") else [".pt", ".json"]))
    extra = data.draw(st.sampled_from([[], ["--num-experts", "4"], ["--top-k", "2"], ["--format", "sglang"]]))
    with workspace() as root:
        dump = root / f"dump{suffix}"
        try:
            _save_record(record, dump)
        except (TypeError, ValueError):
            dump.write_bytes(b"\x80junk")
        if data.draw(st.integers(0, 5)) == 0:
            dump.write_bytes(mutate_bytes(data, dump.read_bytes()))
        run_cli("engine dumps", ["profile", "import", dump.name, *extra, "--out", "prof"], root, ("prof",)).check()


# ---- the inputs issue #14 found, one by one ----------------------------------------------------
def _nan_router_inputs(root: Path, assets: dict) -> list:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(assets["recorded"], root / "prof")
    arrays = load_file(str(root / "prof" / "router_inputs.safetensors"))
    arrays["router_inputs"][0, 0, 0] = np.nan
    save_file(arrays, str(root / "prof" / "router_inputs.safetensors"))
    return ["train-predictor", "--profile", "prof", "--out", "pred.safetensors"]


def _nan_predictor(root: Path, assets: dict) -> list:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(assets["predictor"]), framework="numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(assets["predictor"]))
    name = sorted(n for n in tensors if n.endswith(".weight"))[0]
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(root / "pred.safetensors"), metadata=metadata)
    return ["serve", "--model", assets["model"], "--predictor", "pred.safetensors"]


def _trace(text: str, name: str = "trace.csv", *extra: str):
    def build(root: Path, assets: dict) -> list:
        (root / name).write_text(text)
        return ["serve", "--model", assets["model"], "--trace", name, *extra, "--plan", assets["other_plan"]]
    return build


def _csv(text: str, *extra: str):
    def build(root: Path, assets: dict) -> list:
        (root / "loads.csv").write_text(text)
        return ["profile", "import", "loads.csv", *extra, "--out", "prof"]
    return build


def _args(*args: str):
    return lambda root, assets: [a.format(**{k: str(v) for k, v in assets.items()}) for a in args]


HEADER = "timestamp,input_tokens,output_tokens\n"
REPRODUCTIONS = {
    "inf timestamp": (_trace(HEADER + "0,20,4\ninf,20,4\n"), "arrival time must be a finite number"),
    "1e308 timestamps": (_trace(HEADER + "-1e308,20,4\n1e308,20,4\n"), "arrival time must be at least"),
    "nan timestamp": (_trace(HEADER + "nan,20,4\n"), "arrival time must be a finite number"),
    "huge span": (_trace(HEADER + "0,20,4\n1e12,20,4\n", "trace.csv", "--max-requests", "2"), "spans"),
    "time-scale nan": (_trace(HEADER + "0,20,4\n", "trace.csv", "--time-scale", "nan"), "--time-scale must be a finite"),
    "jsonl row missing a key": (_trace('{"timestamp": 0, "input_tokens": 3, "output_tokens": 2}\n{"timestamp": 1}\n',
                                       "trace.jsonl"), "request 2 has no input_tokens"),
    "jsonl row not an object": (_trace('{"timestamp": 0, "input_tokens": 3, "output_tokens": 2}\n[1, 2]\n',
                                       "trace.jsonl"), "line 2 is not a JSON object"),
    "true as a length": (_trace('{"timestamp": 0, "input_tokens": true, "output_tokens": 2}\n', "trace.jsonl"),
                         "input_tokens must be an integer, got True"),
    "token count 1e400": (_trace(HEADER + "0,1e400,4\n"), "input_tokens must be an integer"),
    "workers 0": (_args("serve", "--model", "{model}", "--workers", "0"), "--workers must be at least 1, got 0"),
    "workers -1": (_args("serve", "--model", "{model}", "--workers=-1"), "--workers must be at least 1, got -1"),
    "distance beyond the predictor": (_args("serve", "--model", "{model}", "--predictor", "{predictor}", "--distance",
                                            "99"), "--distance 99: predictor"),
    "NaN router inputs": (_nan_router_inputs, "router_inputs holds 1 NaN"),
    "NaN predictor": (_nan_predictor, "holds 1 NaN"),
    "CSV overflowing to inf": (_csv("layer,expert,count\n0,0,1e308\n0,1,1e308\n"),
                               "count must be a finite non-negative number up to 1e+15"),
    "CSV count inf": (_csv("layer,expert,count\n0,0,inf\n"), "count must be a finite non-negative number"),
    "CSV expert id 2e9": (_csv("layer,expert,count\n0,2000000000,1\n"), "expert in [0, 65536)"),
    "num-experts 2e9": (_csv("layer,expert,count\n0,0,1\n", "--num-experts", "2000000000"), "--num-experts must be at most"),
    "gpus 1e23": (_args("plan", "--loads", "{loads}", "--gpus", "99999999999999999999999"), "--gpus must be at most 1024"),
    "gpus 100000": (_args("plan", "--loads", "{loads}", "--gpus", "100000"), "--gpus must be at most 1024"),
    "dense-layers 1e8": (_args("plan", "export", "{plan}", "--dense-layers", "100000000", "--out", "x.json"),
                         "--dense-layers must be at most"),
    "bench epochs 0": (_args("bench", "--epochs", "0", "--out", "b"), "--epochs must be at least 1, got 0"),
    "profile import --out .": (_args("profile", "import", "{loads}", "--out", "."), "is the current folder"),
}


@pytest.mark.parametrize("case", sorted(REPRODUCTIONS))
def test_issue_reproductions_are_one_clean_error(assets, case):
    build, fragment = REPRODUCTIONS[case]
    with workspace() as root:
        outcome = run_cli("issue reproductions", build(root, assets), root, ("prof", "pred.safetensors", "x.json", "b"))
    outcome.check()
    assert outcome.kind == "clean" and fragment in outcome.stderr, outcome.stderr


def test_excel_csvs_are_accepted(tmp_path):
    """UTF-8 with a byte-order mark and CRLF line ends, as Excel saves CSVs."""
    from moeless_cli.loads_csv import read_loads_csv
    from moeless_cli.workloads.traces import load_trace

    (tmp_path / "loads.csv").write_bytes(b"\xef\xbb\xbflayer,expert,count\r\n0,0,5\r\n0,1,3\r\n")
    assert read_loads_csv(tmp_path / "loads.csv").tolist() == [[5.0, 3.0]]
    (tmp_path / "trace.csv").write_bytes(b"\xef\xbb\xbftimestamp,input_tokens,output_tokens\r\n0,5,3\r\n2,7,2\r\n")
    trace = load_trace(tmp_path / "trace.csv")
    assert trace.arrival_s.tolist() == [0.0, 2.0] and trace.input_tokens.tolist() == [5, 7]
