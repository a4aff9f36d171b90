"""The console script's skeleton: help lists every stage; errors are one line."""

from __future__ import annotations

import pytest

from moeless_cli.cli.common import guarded
from moeless_cli.errors import MoelessError


def test_help_lists_every_pipeline_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in ("profile", "train-predictor", "plan", "serve", "bench"):
        assert name in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output.startswith("moeless ")


def test_guarded_turns_user_errors_into_one_line_and_exit_code(capsys):
    import typer

    @guarded
    def boom() -> None:
        raise MoelessError("bad input:\n  details here", exit_code=3)

    with pytest.raises(typer.Exit) as info:
        boom()
    assert info.value.exit_code == 3
    err = capsys.readouterr().err
    assert err.strip() == "error: bad input: details here"


def test_atomic_writes_turn_os_errors_into_user_errors(tmp_path):
    from moeless_cli.fileio import atomic_directory, write_bytes_atomic

    # A directory where the file should go: refused, nothing is left behind.
    target = tmp_path / "out.json"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(MoelessError, match="is a directory"):
        write_bytes_atomic(target, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    # A parent that is a file: no temp dir can be made there.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MoelessError):
        with atomic_directory(blocker / "profile"):
            pass
