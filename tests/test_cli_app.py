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
