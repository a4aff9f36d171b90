"""Prompt datasets: built-in named sets shipped in the package, or any local file via `datasets`.

Built-ins (each folder under data/datasets/ has a SOURCE.md): gsm8k (math), humaneval (code),
wikitext2 and tinyshakespeare (prose); `mix`, which interleaves the four; and `shift`, a workload
that moves: phases of one domain each, in order (code, then math, then prose; equal phases of the
requested prompts), so that a replay in prompt order shifts the routing under the systems. Local
.json/.jsonl/.parquet/.csv/.txt files go through `datasets.load_dataset`; a hub dataset name works
when online.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from moeless_cli.errors import MoelessError
from moeless_cli.fileio import check_name_lengths

DATASETS_DIR = Path(__file__).resolve().parent.parent / "data" / "datasets"
DEFAULT_DATASET = "mix"
# Tried in order when --text-field is not given; the last one is ShareGPT's first turn.
DEFAULT_TEXT_FIELDS = ("text", "prompt", "question", "conversations.0.value")
CHAT_FIELDS = ("prompt", "question", "conversations")  # fields whose rows read as a user's message
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


@dataclass(frozen=True)
class Prompt:
    text: str  # the raw prompt, or the user's message when `chat`
    domain: str  # "math", "code", "prose", ... or "unknown"
    source: str  # dataset the prompt came from (a built-in name or a file name)
    chat: bool  # wrap in the model's chat template when its tokenizer has one


@dataclass
class PromptSet:
    name: str  # what the user asked for (built-in name, path or hub name)
    prompts: list[Prompt]

    @property
    def domains(self) -> list[str]:
        return sorted({p.domain for p in self.prompts})

    def __len__(self) -> int:
        return len(self.prompts)


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _builtin_reader(file: str, field: str, domain: str, chat: bool) -> Callable[[str], list[Prompt]]:
    def read(name: str) -> list[Prompt]:
        rows = _read_jsonl(DATASETS_DIR / name / file)
        return [Prompt(row[field], domain, name, chat) for row in rows if str(row.get(field, "")).strip()]

    return read


BUILTIN_DATASETS: dict[str, Callable[[str], list[Prompt]]] = {
    "gsm8k": _builtin_reader("test-500.jsonl", "question", "math", chat=True),
    "humaneval": _builtin_reader("HumanEval.jsonl.gz", "prompt", "code", chat=False),
    "wikitext2": _builtin_reader("test-paragraphs.jsonl", "text", "prose", chat=False),
    "tinyshakespeare": _builtin_reader("chunks.jsonl", "text", "prose", chat=False),
}
MIX_PARTS = ("gsm8k", "humaneval", "wikitext2", "tinyshakespeare")
SHIFT_PHASES = (("code", ("humaneval",)), ("math", ("gsm8k",)), ("prose", ("wikitext2", "tinyshakespeare")))
PHASED_DATASETS = ("shift",)  # built-ins whose prompt order is a sequence of phases (replay keeps it)


def builtin_dataset_names() -> list[str]:
    return sorted([*BUILTIN_DATASETS, "mix", *PHASED_DATASETS])


def _interleave(parts: list[list[Prompt]]) -> list[Prompt]:
    mixed = []
    for i in range(max(len(p) for p in parts)):
        mixed.extend(part[i] for part in parts if i < len(part))
    return mixed


def load_prompts(name_or_path: str, text_field: str | None = None, num_prompts: int | None = None,
                 seed: int = 0) -> PromptSet:
    """Load up to `num_prompts` prompts (a seeded random subset, order shuffled) from a dataset.

    Built-in names ignore `text_field`. Raises MoelessError for unknown names, a missing text
    field (listing the fields there are) or a dataset with no non-empty prompts.
    """
    if num_prompts is not None and num_prompts < 1:
        raise MoelessError(f"--num-prompts must be at least 1 (got {num_prompts})")
    rng = random.Random(seed)
    if name_or_path == "mix":
        parts = [_shuffled(BUILTIN_DATASETS[n](n), rng) for n in MIX_PARTS]
        prompts = _interleave(parts)
    elif name_or_path == "shift":
        prompts = _phases(rng, num_prompts)
    elif name_or_path in BUILTIN_DATASETS:
        prompts = _shuffled(BUILTIN_DATASETS[name_or_path](name_or_path), rng)
    else:
        prompts = _shuffled(_load_external(name_or_path, text_field), rng)
    if not prompts:
        raise MoelessError(f"dataset {name_or_path} has no non-empty prompts")
    return PromptSet(name=name_or_path, prompts=prompts[:num_prompts] if num_prompts else prompts)


def _phases(rng: random.Random, num_prompts: int | None) -> list[Prompt]:
    """SHIFT_PHASES in order, each a seeded random subset of its datasets (interleaved when several):
    num_prompts split as evenly as the phases allow (the first ones get the remainder), or as many per
    phase as the smallest has."""
    phases = [_interleave([_shuffled(BUILTIN_DATASETS[n](n), rng) for n in names]) for _, names in SHIFT_PHASES]
    if num_prompts is None:
        sizes = [min(len(p) for p in phases)] * len(phases)
    else:
        sizes = [num_prompts // len(phases) + (i < num_prompts % len(phases)) for i in range(len(phases))]
    return [prompt for phase, size in zip(phases, sizes) for prompt in phase[:size]]


def _shuffled(prompts: list[Prompt], rng: random.Random) -> list[Prompt]:
    prompts = list(prompts)
    rng.shuffle(prompts)
    return prompts


def _load_external(name_or_path: str, text_field: str | None) -> list[Prompt]:
    check_name_lengths(name_or_path, "--dataset")
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_file(path, text_field)
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return _load_hub(name_or_path, text_field)
    raise MoelessError(
        f"unknown dataset {name_or_path!r}: not a built-in ({', '.join(builtin_dataset_names())}) "
        "and no such file"
    )


def _datasets_quietly() -> Any:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its failures reach the user as our one line
    return datasets


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type and message, on one line (datasets wraps parse errors)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _load_file(path: Path, text_field: str | None) -> list[Prompt]:
    if path.is_dir():
        raise MoelessError(f"dataset path {path} is a directory; give a .json/.jsonl/.parquet/.csv/.txt file")
    if not path.is_file():  # a pipe or a device would block the reader, or never end
        raise MoelessError(f"dataset path {path} is not a regular file")
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise MoelessError(f"dataset {path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_BUILDERS)})")
    datasets = _datasets_quietly()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        cause = _root_cause(exc)
        if "empty" in cause.lower() or path.stat().st_size == 0:
            raise MoelessError(f"dataset {path} is empty") from None
        raise MoelessError(f"cannot read dataset {path}: {cause}") from None
    return _prompts_from_table(table, text_field, source=path.name, where=str(path))


def _load_hub(name: str, text_field: str | None) -> list[Prompt]:
    datasets = _datasets_quietly()
    try:
        table = datasets.load_dataset(name, split="train")
    except Exception as exc:
        message = " ".join(str(exc).split())[:200]
        raise MoelessError(f"cannot load hub dataset {name!r} (offline, or no such dataset?): {message}") from None
    return _prompts_from_table(table, text_field, source=name, where=name)


def _lookup(row: dict[str, Any], dotted: str) -> Any:
    """`conversations.0.value` -> row["conversations"][0]["value"]; None when any step is missing."""
    value: Any = row
    for step in dotted.split("."):
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def _prompts_from_table(table: Any, text_field: str | None, source: str, where: str) -> list[Prompt]:
    columns = list(table.column_names)
    if table.num_rows == 0:
        raise MoelessError(f"dataset {where} is empty")
    candidates = (text_field,) if text_field else DEFAULT_TEXT_FIELDS
    first = table[0]
    field = next((c for c in candidates if _lookup(first, c) is not None), None)
    if field is None:
        wanted = f"--text-field {text_field!r}" if text_field else f"a text field ({', '.join(DEFAULT_TEXT_FIELDS)})"
        raise MoelessError(f"dataset {where} has no {wanted}; available fields: {', '.join(columns)} (use --text-field)")
    chat = field.split(".")[0] in CHAT_FIELDS
    has_domain = "domain" in columns
    prompts = []
    for batch in table.iter(batch_size=1000):  # batched: row-by-row access is ~100x slower
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:
            text = _lookup(row, field)
            if isinstance(text, str) and text.strip():
                domain = str(row["domain"]) if has_domain and row.get("domain") else "unknown"
                prompts.append(Prompt(text, domain, source, chat))
    return prompts


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The text the model sees: the chat template for chat prompts when the tokenizer has one."""
    if prompt.chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt.text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt.text
