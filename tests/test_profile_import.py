"""`moeless profile import`: load counts from a CSV become a load-only profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import moeless_cli
from moeless_cli.loads_csv import read_loads_csv
from moeless_cli.profiling import load_profile

OLMOE_CSV = Path(moeless_cli.__file__).parent / "data" / "loads" / "olmoe-1b-7b" / "olmoe_expert_counts.csv"


def test_import_shipped_olmoe_counts_with_where(cli, tmp_path):
    out = tmp_path / "olmoe-code"
    result = cli("profile", "import", OLMOE_CSV, "--where", "corpus=code", "--top-k", "8", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["out"] == str(out) and doc["layers"] == 16 and doc["experts"] == 64
    assert doc["iterations"] == 1 and doc["tokens"] == 0 and doc["top_k"] == 8
    profile = load_profile(out)
    assert profile.imported and profile.topk_ids is None and profile.router_inputs is None
    assert profile.load.shape == (1, 16, 64)
    np.testing.assert_array_equal(profile.load[0], read_loads_csv(OLMOE_CSV, {"corpus": "code"}))
    assert not profile.manifest["present"]["routing"]


def test_import_pads_experts_and_reports_bad_input(cli, tmp_path):
    csv = tmp_path / "loads.csv"
    csv.write_text("layer,expert,count,corpus\n0,0,5,a\n0,1,3,a\n1,1,2,b\n")
    result = cli("profile", "import", csv, "--num-experts", "4", "--out", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    profile = load_profile(tmp_path / "p")
    assert profile.load[0].tolist() == [[5, 3, 0, 0], [0, 2, 0, 0]]

    bad = cli("profile", "import", csv, "--where", "nope=1", "--out", tmp_path / "q", "--json")
    assert bad.exit_code != 0 and "error: --where column(s) nope" in bad.stderr and not (tmp_path / "q").exists()
    bad = cli("profile", "import", csv, "--num-experts", "1", "--out", tmp_path / "q")
    assert bad.exit_code != 0 and "--num-experts 1" in bad.stderr and not (tmp_path / "q").exists()
    missing = cli("profile", "import", tmp_path / "missing.csv", "--out", tmp_path / "q")
    assert missing.exit_code != 0 and "not found" in missing.stderr
