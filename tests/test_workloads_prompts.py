"""Prompt datasets: the shipped built-ins, local files through `datasets`, and bad input."""

from __future__ import annotations

import json

import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.workloads.prompts import (
    DATASETS_DIR,
    Prompt,
    builtin_dataset_names,
    load_prompts,
    render_prompt,
)

EXPECTED_DOMAINS = {"gsm8k": "math", "humaneval": "code", "wikitext2": "prose", "tinyshakespeare": "prose"}


@pytest.mark.parametrize("name", sorted(EXPECTED_DOMAINS))
def test_builtin_datasets_ship_with_attribution(name):
    source = (DATASETS_DIR / name / "SOURCE.md").read_text()
    assert "License" in source and "What moeless ships" in source
    prompts = load_prompts(name)
    assert len(prompts) >= 164
    assert prompts.domains == [EXPECTED_DOMAINS[name]]
    assert all(p.text.strip() and p.source == name for p in prompts.prompts)


def test_mix_is_default_and_interleaves_all_four():
    assert "mix" in builtin_dataset_names()
    mix = load_prompts("mix", num_prompts=8, seed=3)
    assert [p.source for p in mix.prompts[:4]] == ["gsm8k", "humaneval", "wikitext2", "tinyshakespeare"]
    assert mix.domains == ["code", "math", "prose"]


def test_subset_is_seeded():
    a = load_prompts("gsm8k", num_prompts=5, seed=1).prompts
    assert a == load_prompts("gsm8k", num_prompts=5, seed=1).prompts
    assert a != load_prompts("gsm8k", num_prompts=5, seed=2).prompts


def test_local_jsonl_csv_txt_parquet(tmp_path):
    rows = [{"prompt": "add 2 and 3", "domain": "math"}, {"prompt": "write a poem", "domain": "prose"}]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_prompts(str(jsonl))
    assert sorted(p.text for p in got.prompts) == ["add 2 and 3", "write a poem"]
    assert got.domains == ["math", "prose"] and all(p.chat for p in got.prompts)

    csv = tmp_path / "p.csv"
    csv.write_text("id,body\n1,hello there\n2,general kenobi\n")
    assert len(load_prompts(str(csv), text_field="body")) == 2

    txt = tmp_path / "p.txt"
    txt.write_text("first line\n\nsecond line\n")
    got = load_prompts(str(txt))
    assert sorted(p.text for p in got.prompts) == ["first line", "second line"]
    assert not any(p.chat for p in got.prompts) and got.domains == ["unknown"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a b c", "d e f", "g"]}), parquet)
    assert len(load_prompts(str(parquet), num_prompts=2)) == 2


def test_sharegpt_conversations_first_turn(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "how are you"}]},
    ]))
    got = load_prompts(str(path))
    assert sorted(p.text for p in got.prompts) == ["hi", "how are you"]


def test_missing_field_lists_available_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(MoelessError, match="available fields: body, id"):
        load_prompts(str(path))
    with pytest.raises(MoelessError, match="--text-field 'nope'"):
        load_prompts(str(path), text_field="nope")


def test_empty_and_unknown_datasets(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MoelessError, match="empty"):
        load_prompts(str(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "  "}\n')
    with pytest.raises(MoelessError, match="no non-empty prompts"):
        load_prompts(str(blank))
    with pytest.raises(MoelessError, match="built-in.*gsm8k.*mix"):
        load_prompts("no-such-dataset")
    xml = tmp_path / "p.xml"
    xml.write_text("<a/>")
    with pytest.raises(MoelessError, match="unsupported file type"):
        load_prompts(str(xml))


def test_hub_name_offline_is_a_one_line_error():
    # conftest sets HF_DATASETS_OFFLINE=1: nothing is downloaded, the user is told why.
    with pytest.raises(MoelessError, match="cannot load hub dataset"):
        load_prompts("no-such-owner/no-such-dataset")


def test_chat_template_applies_to_chat_prompts_only():
    from tiny_models import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    chat = render_prompt(Prompt("what is 2+2?", "math", "t", chat=True), tokenizer)
    assert chat.startswith("<|user|>what is 2+2?") and chat.endswith("<|assistant|>")
    assert render_prompt(Prompt("def f():", "code", "t", chat=False), tokenizer) == "def f():"
    tokenizer.chat_template = None
    assert render_prompt(Prompt("q", "math", "t", chat=True), tokenizer) == "q"


def test_shift_yields_its_phases_in_order():
    assert "shift" in builtin_dataset_names()
    shift = load_prompts("shift", num_prompts=12, seed=0)
    assert [p.domain for p in shift.prompts] == ["code"] * 4 + ["math"] * 4 + ["prose"] * 4
    assert {p.source for p in shift.prompts[8:]} == {"wikitext2", "tinyshakespeare"}  # prose interleaves both
    assert [p.domain for p in load_prompts("shift", num_prompts=7).prompts] == ["code"] * 3 + ["math"] * 2 + ["prose"] * 2
    assert shift.prompts == load_prompts("shift", num_prompts=12, seed=0).prompts  # seeded
    whole = load_prompts("shift")
    assert len(whole) == 3 * 164  # as many per phase as the smallest (HumanEval) has
