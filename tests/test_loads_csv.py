from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.loads_csv import parse_where, read_loads_csv


def test_reads_sums_and_filters(tmp_path):
    path = tmp_path / "loads.csv"
    path.write_text("corpus,layer,expert,count\na,0,0,5\na,0,2,1\nb,0,0,100\na,1,1,7\na,0,0,2\n")
    load = read_loads_csv(path, {"corpus": "a"})
    assert load.shape == (2, 3)
    np.testing.assert_array_equal(load, [[7, 0, 1], [0, 7, 0]])


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("layer,expert\n0,0\n", "missing column(s) count"),
        ("layer,expert,count\n0,x,3\n", "line 2"),
        ("layer,expert,count\n0,1,-3\n", "line 2"),
        ("layer,expert,count\n", "no load rows"),
    ],
)
def test_bad_csv_names_the_fault(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(MoelessError, match=None) as info:
        read_loads_csv(path)
    assert fragment in str(info.value)


def test_where_validation(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("layer,expert,count\n0,0,1\n")
    with pytest.raises(MoelessError, match="not in"):
        read_loads_csv(path, {"corpus": "code"})
    with pytest.raises(MoelessError, match="COLUMN=VALUE"):
        parse_where(["corpus"])


def test_shipped_olmoe_counts_are_complete():
    from importlib.resources import files

    csv_path = files("moeless_cli") / "data" / "loads" / "olmoe-1b-7b" / "olmoe_expert_counts.csv"
    load = read_loads_csv(csv_path, {"corpus": "code", "shape": "1x512"})
    assert load.shape == (16, 64)
    # every layer of a 1x512 x 16-step run routes 512*16 tokens to top-8 experts
    np.testing.assert_array_equal(load.sum(axis=1), np.full(16, 512 * 16 * 8))
