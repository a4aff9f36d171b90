"""Shared test fixtures. Tests never touch the network or ../shared."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_COLOR", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("MOELESS_NO_PROGRESS", "1")


@pytest.fixture
def cli():
    """Invoke the moeless CLI in-process; returns a function(args) -> click Result."""
    from typer.testing import CliRunner

    from moeless_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
