"""`moeless models`: the built-in models shipped in the package and the supported checkpoint families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from moeless_cli.cli.common import JSON_OPTION_HELP, console, emit_json, guarded

HELP = "List the built-in models (shape, size, domains, held-out perplexity) and the supported checkpoint families."


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def builtin_model_rows() -> list[dict[str, Any]]:
    """One row per shipped built-in model, from its moeless-builtin.json and its files on disk."""
    from moeless_cli.fileio import read_json
    from moeless_cli.models import builtin_names, resolve_model_path

    rows = []
    for name in builtin_names():
        path = resolve_model_path(name)
        meta = read_json(path / "moeless-builtin.json", what=f"built-in model metadata for {name}")
        rows.append({
            "name": name,
            "architecture": meta["architecture"],
            "layers": meta["layers"],
            "experts": meta["experts"],
            "top_k": meta["top_k"],
            "hidden_size": meta["hidden_size"],
            "params": meta["params"],
            "bytes_on_disk": _dir_bytes(path),
            "domains": meta["domains"],
            "heldout_ppl": meta["heldout_ppl"],
            "unigram_ppl": meta["unigram_ppl"],
            "trained_steps": meta["trained_steps"],
            "tokens_seen": meta["tokens_seen"],
            "path": str(path),
        })
    return rows


def _print_tables(models: list[dict[str, Any]], families: list[dict[str, str]]) -> None:
    from rich.table import Table

    table = Table(title="Built-in models (shipped, no download)")
    table.add_column("name", no_wrap=True)
    for column in ("architecture", "shape", "params", "size", "domains", "held-out ppl (unigram)"):
        table.add_column(column)
    for m in models:
        ppl = ", ".join(f"{d} {m['heldout_ppl'][d]:.0f} ({m['unigram_ppl'][d]:.0f})" for d in m["domains"])
        table.add_row(
            m["name"], m["architecture"],
            f"{m['layers']}L x {m['experts']}E top-{m['top_k']}, d={m['hidden_size']}",
            f"{m['params'] / 1e6:.1f}M", f"{m['bytes_on_disk'] / 1e6:.1f} MB", ", ".join(m["domains"]), ppl,
        )
    if not models:
        table.add_row("(none shipped)", "", "", "", "", "", "")
    console.print(table)
    fams = Table(title="Supported checkpoint families (local Hugging Face directories)")
    for column in ("model_type", "architecture", "routing"):
        fams.add_column(column)
    for f in families:
        fams.add_row(f["model_type"], f["architecture"], f["notes"])
    console.print(fams)


def register(app: typer.Typer) -> None:
    @app.command(name="models", help=HELP)
    @guarded
    def models_command(
        json_out: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
    ) -> None:
        from moeless_cli.models import supported_families

        models = builtin_model_rows()
        families = supported_families()
        if json_out:
            emit_json({"builtin": models, "families": families})
        else:
            _print_tables(models, families)
