"""Domain corpora for training the built-in models: real public text, split into train/held-out.

Four domains, read from a local data directory (../shared/data in the project checkout):
  prose  WikiText-2 (valid+test, CC BY-SA 3.0) and tinyshakespeare (public domain)
  code   HumanEval prompts+solutions (MIT) and the running Python's own stdlib .py sources (PSF)
  math   GSM8K question + worked answer (MIT)
  chat   ShareGPT-1k first-turn prompts (used for training only, never bundled)

A document goes to the held-out split when its index is a multiple of `HELDOUT_EVERY`, so the
split is deterministic and spread over each source.
"""

from __future__ import annotations

import gzip
import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

DOMAINS = ("prose", "code", "math", "chat")
HELDOUT_EVERY = 20  # 5% of each domain's documents are held out for evaluation
DOC_CHARS = 4000  # long texts are cut into documents of about this many characters, at line ends
STDLIB_MAX_BYTES = 4_000_000  # enough Python to balance the other domains; sorted paths, so fixed
STDLIB_MAX_FILE_BYTES = 120_000  # skip the few huge generated files (unicode tables, ...)

REQUIRED_FILES = (
    "wikitext2/valid.txt",
    "wikitext2/test.txt",
    "tinyshakespeare/input.txt",
    "humaneval/HumanEval.jsonl.gz",
    "gsm8k/train.jsonl",
    "gsm8k/test.jsonl",
    "sharegpt-1k/ShareGPT_V3_filtered_1000.json",
)


@dataclass
class DomainText:
    """The documents of one domain, already split."""

    name: str  # one of DOMAINS
    train: list[str] = field(default_factory=list)  # training documents
    heldout: list[str] = field(default_factory=list)  # evaluation documents, never trained on
    sources: list[str] = field(default_factory=list)  # human-readable origin of the text


def check_data_dir(data_dir: Path) -> None:
    """Fail with one clear line when the data directory or one of its files is missing."""
    if not data_dir.is_dir():
        raise SystemExit(f"error: data directory not found: {data_dir} (pass --data-dir)")
    missing = [rel for rel in REQUIRED_FILES if not (data_dir / rel).is_file()]
    if missing:
        raise SystemExit(f"error: data directory {data_dir} lacks {', '.join(missing)}")


def chunk_text(text: str, size: int = DOC_CHARS) -> list[str]:
    """Cut a long text into documents of about `size` characters, breaking at line ends."""
    docs, current, length = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        length += len(line)
        if length >= size:
            docs.append("".join(current))
            current, length = [], 0
    if current and "".join(current).strip():
        docs.append("".join(current))
    return docs


def _stdlib_sources() -> list[str]:
    """The stdlib's own .py files (sorted, capped), as documents; the PSF license allows reuse."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            size = path.stat().st_size
            if size > STDLIB_MAX_FILE_BYTES or size == 0:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.extend(chunk_text(text))
        total += size
        if total >= STDLIB_MAX_BYTES:
            break
    return docs


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _split(name: str, docs: list[str], sources: list[str]) -> DomainText:
    domain = DomainText(name=name, sources=sources)
    for index, doc in enumerate(docs):
        (domain.heldout if index % HELDOUT_EVERY == 0 else domain.train).append(doc)
    return domain


def load_domains(data_dir: Path) -> dict[str, DomainText]:
    """Read every domain from `data_dir`; see the module docstring for sources and licenses."""
    check_data_dir(data_dir)
    prose = []
    for rel in ("wikitext2/valid.txt", "wikitext2/test.txt", "tinyshakespeare/input.txt"):
        prose.extend(chunk_text((data_dir / rel).read_text(encoding="utf-8")))

    with gzip.open(data_dir / "humaneval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        humaneval = [json.loads(line) for line in f if line.strip()]
    code = [row["prompt"] + row["canonical_solution"] for row in humaneval]
    code.extend(_stdlib_sources())

    math = [
        f"Question: {row['question']}\nAnswer: {row['answer']}\n"
        for rel in ("gsm8k/train.jsonl", "gsm8k/test.jsonl")
        for row in _read_jsonl(data_dir / rel)
    ]

    conversations = json.loads((data_dir / "sharegpt-1k/ShareGPT_V3_filtered_1000.json").read_text("utf-8"))
    chat = [turn["value"] for conv in conversations for turn in conv["conversations"] if turn["value"].strip()]

    return {
        "prose": _split("prose", prose, ["WikiText-2 valid+test (CC BY-SA 3.0)", "tinyshakespeare (public domain)"]),
        "code": _split("code", code, ["HumanEval prompt+solution (MIT)", "CPython stdlib .py sources (PSF)"]),
        "math": _split("math", math, ["GSM8K train+test question+answer (MIT)"]),
        "chat": _split("chat", chat, ["ShareGPT-1k first-turn prompts (training only)"]),
    }
