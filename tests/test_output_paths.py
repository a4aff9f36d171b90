"""The output-path policy (fileio.py) through every writer: never remove or replace a folder moeless
did not write, write through symlinks, refuse what is not a regular file, report writes that did
not land, check outputs before the work, never drop a finished report, and leave a bench folder as
it was when a run fails."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import orjson
import pytest
from tiny_models import cached_tiny_checkpoint

from moeless_cli.errors import MoelessError

LOADS = "layer,expert,count\n0,0,5\n0,1,3\n1,0,2\n1,1,7\n"


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """An empty working folder with a loads CSV and a user's folder of precious files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counts.csv").write_text(LOADS)
    (tmp_path / "userdir" / "sub").mkdir(parents=True)
    (tmp_path / "userdir" / "notes.txt").write_text("precious\n")
    return tmp_path


def one_error(result, fragment: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _no_work(monkeypatch, target: str) -> None:
    """Fail the test if the long work behind `target` (module:function) starts."""
    module, name = target.split(":")

    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran: the output should have been refused before the work")

    monkeypatch.setattr(f"{module}.{name}", refuse)


# ---- folders moeless did not write -------------------------------------------------------------
def test_profile_import_never_replaces_a_users_folder(cli, here):
    before = tree(here / "userdir")
    one_error(cli("profile", "import", "counts.csv", "--top-k", "2", "--out", "userdir"), "moeless did not write")
    one_error(cli("profile", "import", "counts.csv", "--top-k", "2", "--out", "userdir", "--force"),
              "moeless did not write")
    assert tree(here / "userdir") == before


def test_profile_refuses_a_users_folder_before_loading_the_model(cli, here, monkeypatch):
    _no_work(monkeypatch, "moeless_cli.profiling.record:record_routing")
    before = tree(here / "userdir")
    one_error(cli("profile", "--model", "tiny-mixtral", "--out", "userdir"), "moeless did not write")
    assert tree(here / "userdir") == before


def test_a_profile_is_replaced_only_with_force(cli, here):
    assert cli("profile", "import", "counts.csv", "--out", "prof").exit_code == 0
    first = tree(here / "prof")
    one_error(cli("profile", "import", "counts.csv", "--top-k", "2", "--out", "prof"), "give --force")
    assert tree(here / "prof") == first
    (here / "counts.csv").write_text(LOADS + "2,0,1\n")
    assert cli("profile", "import", "counts.csv", "--out", "prof", "--force", "--json").exit_code == 0
    assert json.loads((here / "prof" / "manifest.json").read_text())["num_layers"] == 3
    assert not [p for p in here.iterdir() if p.name.startswith(".")], "no temp folders left behind"


def test_empty_folder_is_used_and_current_folder_is_refused(cli, here):
    (here / "empty").mkdir()
    assert cli("profile", "import", "counts.csv", "--out", "empty").exit_code == 0
    assert (here / "empty" / "manifest.json").is_file()
    before = tree(here)
    for out in (".", "..", str(here)):
        one_error(cli("profile", "import", "counts.csv", "--out", out), "current folder")
    assert tree(here) == before


def test_a_profile_symlink_is_written_through(cli, here):
    assert cli("profile", "import", "counts.csv", "--out", "real").exit_code == 0
    (here / "link").symlink_to("real")
    assert cli("profile", "import", "counts.csv", "--out", "link", "--force").exit_code == 0
    assert (here / "link").is_symlink() and (here / "real" / "manifest.json").is_file()


# ---- files: symlinks, devices, writes that do not land -----------------------------------------
def test_plan_writes_through_a_symlink(cli, here):
    (here / "target.json").write_text("{}")
    (here / "link.json").symlink_to("target.json")
    assert cli("plan", "--loads", "counts.csv", "--gpus", "2", "--out", "link.json").exit_code == 0
    assert (here / "link.json").is_symlink()
    assert json.loads((here / "target.json").read_text())["schema"] == "moeless.plan/v1"


@pytest.mark.parametrize("command", [
    ("plan", "--loads", "counts.csv", "--gpus", "2", "--out", "pipe"),
    ("serve", "--model", "tiny-mixtral", "--out", "pipe"),
    ("train-predictor", "--profile", "prof", "--out", "pipe"),
])
def test_non_regular_files_are_refused_before_the_work(cli, here, monkeypatch, command):
    _no_work(monkeypatch, "moeless_cli.jobs.serve:serve")
    assert cli("profile", "import", "counts.csv", "--out", "prof").exit_code == 0
    os.mkfifo(here / "pipe")
    one_error(cli(*command), "not a regular file")
    assert stat.S_ISFIFO(os.lstat(here / "pipe").st_mode)


def test_a_write_that_did_not_land_is_an_error(here, monkeypatch):
    from moeless_cli import fileio

    real_fstat = os.fstat

    def short(fd):
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 0, *info[7:]))  # st_size 0: the bytes never arrived

    monkeypatch.setattr(fileio.os, "fstat", short)
    with pytest.raises(MoelessError, match="did not land"):
        fileio.write_bytes_atomic(here / "out.json", b"{}")
    assert not (here / "out.json").exists()
    assert not [p for p in here.iterdir() if p.name.startswith(".")]


def test_new_files_follow_the_umask_and_existing_ones_keep_their_mode(here):
    from moeless_cli.fileio import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(here / "new.json", b"{}")
        assert stat.S_IMODE(os.stat(here / "new.json").st_mode) == 0o644
        os.chmod(here / "new.json", 0o600)
        write_bytes_atomic(here / "new.json", b"[]")
        assert stat.S_IMODE(os.stat(here / "new.json").st_mode) == 0o600
    finally:
        os.umask(old)


# ---- checked before the work -------------------------------------------------------------------
def test_names_too_long_fail_before_the_work(cli, here, monkeypatch):
    _no_work(monkeypatch, "moeless_cli.profiling.record:record_routing")
    long = "x" * 300
    one_error(cli("profile", "--model", "tiny-mixtral", "--out", long), "at most 255")
    one_error(cli("plan", "--loads", "counts.csv", "--gpus", "2", "--out", f"{long}.json"), "at most 255")
    one_error(cli("plan", "--loads", f"{long}.csv", "--gpus", "2"), "at most 255")
    one_error(cli("serve", "--trace", f"{long}.csv"), "at most 255")


def test_serve_out_that_cannot_be_written_fails_before_serving(cli, here, monkeypatch):
    _no_work(monkeypatch, "moeless_cli.jobs.serve:serve")
    one_error(cli("serve", "--json", "--out", "userdir"), "is a directory")
    one_error(cli("serve", "--json", "--out", "counts.csv/report.json"), "is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_fails_before_the_work(cli, here, monkeypatch):
    _no_work(monkeypatch, "moeless_cli.jobs.serve:serve")
    (here / "ro").mkdir(mode=0o555)
    one_error(cli("serve", "--json", "--out", "ro/report.json"), "not writable")


def test_plan_export_never_overwrites_its_plan(cli, here):
    assert cli("plan", "--loads", "counts.csv", "--gpus", "2", "--out", "plan.json").exit_code == 0
    before = (here / "plan.json").read_bytes()
    one_error(cli("plan", "export", "plan.json", "--out", "plan.json"), "also an input")
    (here / "alias.json").symlink_to("plan.json")
    one_error(cli("plan", "export", "plan.json", "--out", "alias.json"), "also an input")
    assert (here / "plan.json").read_bytes() == before


# ---- finished reports are never dropped --------------------------------------------------------
def test_serve_prints_its_report_when_the_file_cannot_be_written(cli, here, monkeypatch):
    def refuse(path, obj):
        raise MoelessError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr("moeless_cli.fileio.write_json_atomic", refuse)
    result = cli("serve", "--model", cached_tiny_checkpoint("mixtral"), "--max-requests", "1",
                 "--max-output-tokens", "1", "--max-prompt-tokens", "8", "--json", "--out", "report.json")
    one_error(result, "No space left")
    assert orjson.loads(result.stdout)["requests"]["completed"] == 1


def test_guarded_prints_an_unwritten_report_then_one_error(capsys):
    import typer

    from moeless_cli.cli.common import guarded
    from moeless_cli.errors import UnwrittenReport

    @guarded
    def finished() -> None:
        raise UnwrittenReport("cannot write out/bench.json: disk full", {"systems": {"static": 1}})

    with pytest.raises(typer.Exit) as info:
        finished()
    out, err = capsys.readouterr()
    assert info.value.exit_code == 2 and json.loads(out) == {"systems": {"static": 1}}
    assert err.strip() == "error: cannot write out/bench.json: disk full"


# ---- bench folders: all or nothing -------------------------------------------------------------
def test_restored_on_failure_puts_a_folder_back_as_it_was(tmp_path):
    from moeless_cli.fileio import restored_on_failure, write_bytes_atomic

    out = tmp_path / "out"
    (out / "profile").mkdir(parents=True)
    (out / "profile" / "load.safetensors").write_bytes(b"old profile")
    (out / "bench.json").write_bytes(b"old report")
    before = tree(out)
    with pytest.raises(MoelessError, match="boom"):
        with restored_on_failure(out):
            write_bytes_atomic(out / "bench.json", b"new report")
            write_bytes_atomic(out / "report.md", b"new")
            (out / "profile" / "load.safetensors").unlink()
            raise MoelessError("boom")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing left beside it"
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        with restored_on_failure(fresh):
            fresh.mkdir()
            (fresh / "half.json").write_text("{")
            raise KeyboardInterrupt
    assert not fresh.exists()


def test_bench_refuses_a_folder_of_other_files(cli, here):
    before = tree(here / "userdir")
    one_error(cli("bench", "--model", "tiny-mixtral", "--out", "userdir"), "moeless did not write")
    assert tree(here / "userdir") == before


def test_a_failed_bench_keeps_the_earlier_run(cli, here, monkeypatch):
    """A run whose stages changed (other prompts) fails after re-profiling: the earlier run's profile,
    stages.json and reports come back untouched, and no new file is left beside them."""
    out = here / "bench-out"
    assert cli("profile", "import", "counts.csv", "--out", out / "profile").exit_code == 0
    (out / "stages.json").write_text('{"profile": {"an": "earlier run"}}')
    (out / "bench.json").write_text('{"mode": "sim"}')
    (out / "report.md").write_text("earlier report\n")
    before = tree(out)

    def boom(*args, **kwargs):
        raise MoelessError("the predictor stage failed")

    monkeypatch.setattr("moeless_cli.bench.pipeline.predictor_stage", boom)
    prompts = here / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"question {i}: " + "why " * (1 + i)}) + "\n" for i in range(4)))
    result = cli("bench", "--model", cached_tiny_checkpoint("mixtral"), "--dataset", prompts, "--num-prompts", "4",
                 "--max-requests", "2", "--out", out)
    one_error(result, "the predictor stage failed")
    assert tree(out) == before
    assert sorted(p.name for p in here.iterdir()) == ["bench-out", "counts.csv", "prompts.jsonl", "userdir"]


# ---- usage errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (("plan", "--no-such-option"), "No such option"),
    (("plan", "--gpus", "abc"), "--gpus"),
    (("profile", "import"), "Missing argument"),
    (("no-such-command",), "No such command"),
])
def test_usage_errors_are_one_line(cli, args, fragment):
    one_error(cli(*args), fragment)
