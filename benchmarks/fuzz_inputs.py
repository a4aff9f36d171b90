"""Count what malformed and edge inputs get back from moeless: runs the fuzz suites
(tests/test_fuzz_*.py: every loader and every numeric option, see tests/fuzzing.py) with N inputs
per loader and per option, and prints per group the inputs tried, valid ones accepted, clean
one-line errors, tracebacks, hangs and runs that touched a file outside their output.

    .venv/bin/python benchmarks/fuzz_inputs.py [--examples 50] [--timeout 60] [-k PATTERN]

Goals: tracebacks 0, hangs 0, files touched 0. Exit status 0 when they hold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("tried", "ok", "clean", "traceback", "hang", "touched")
HEADINGS = ("inputs", "valid", "clean errors", "tracebacks", "hangs", "files touched")


def run_suites(examples: int, timeout: float, pattern: str | None) -> tuple[dict[str, dict[str, int]], int]:
    """Run the fuzz tests in a child pytest; returns (the tally per group, pytest's exit status)."""
    with tempfile.TemporaryDirectory(prefix="moeless-fuzz-tally-") as tmp:
        tally = Path(tmp) / "tally.json"
        env = {**os.environ, "MOELESS_FUZZ_EXAMPLES": str(examples), "MOELESS_FUZZ_TALLY": str(tally),
               "MOELESS_FUZZ_TIMEOUT": str(timeout), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}",
               "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MOELESS_NO_PROGRESS": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
                   *sorted(str(p) for p in (ROOT / "tests").glob("test_fuzz_*.py")), *(["-k", pattern] if pattern else [])]
        status = subprocess.call(command, cwd=ROOT, env=env)
        return (json.loads(tally.read_text()) if tally.is_file() else {}), status


def print_table(tally: dict[str, dict[str, int]]) -> dict[str, int]:
    """One row per group and a total row; returns the totals."""
    width = max([len("group"), *map(len, tally)]) + 2
    print("\n" + "group".ljust(width) + "".join(h.rjust(15) for h in HEADINGS))
    totals = {c: 0 for c in COLUMNS}
    for group in sorted(tally):
        counts = tally[group]
        print(group.ljust(width) + "".join(str(counts.get(c, 0)).rjust(15) for c in COLUMNS))
        for c in COLUMNS:
            totals[c] += counts.get(c, 0)
    print("total".ljust(width) + "".join(str(totals[c]).rjust(15) for c in COLUMNS))
    return totals


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50, help="inputs per loader and per numeric option")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before an input counts as a hang")
    parser.add_argument("-k", dest="pattern", help="only the fuzz tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    tally, status = run_suites(args.examples, args.timeout, args.pattern)
    if not tally:
        print("error: the fuzz suites recorded nothing", file=sys.stderr)
        return 1
    totals = print_table(tally)
    print(f"\n{totals['tried']} inputs: {totals['ok']} valid, {totals['clean']} clean one-line errors, "
          f"{totals['traceback']} tracebacks, {totals['hang']} hangs, {totals['touched']} touched a file "
          f"outside their output (goals: 0, 0, 0); pytest exit status {status}")
    bad = totals["traceback"] + totals["hang"] + totals["touched"]
    return 0 if bad == 0 and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
