from __future__ import annotations

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.workloads.traces import BUILTIN_TRACES, load_trace


@pytest.mark.parametrize("name", sorted(BUILTIN_TRACES))
def test_builtin_traces_load_sorted_from_zero(name):
    trace = load_trace(name)
    assert len(trace) > 1000
    assert trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.input_tokens.min() >= 0 and trace.output_tokens.min() >= 0
    assert trace.output_tokens.sum() > 0


def test_azure_conv_spans_about_an_hour_and_time_scale_compresses_it():
    full = load_trace("azure-conv")
    assert 3000 < full.duration_s < 4000  # 18:15:46 to 19:14:08
    fast = load_trace("azure-conv", time_scale=10.0, max_requests=100)
    assert len(fast) == 100
    np.testing.assert_allclose(fast.arrival_s, full.arrival_s[:100] / 10.0)


def test_user_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("timestamp_ms,input_length,output_length\n2000,10,3\n500,7,1\n")
    trace = load_trace(csv_path)
    np.testing.assert_allclose(trace.arrival_s, [0.0, 1.5])
    np.testing.assert_array_equal(trace.input_tokens, [7, 10])
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": 1000, "input_length": 6, "output_length": 4}\n')
    assert load_trace(jsonl).arrival_s.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("when,input_tokens,output_tokens\n1,2,3\n", "no arrival time column"),
        ("timestamp,input_tokens,output_tokens\n", "no requests"),
        ("timestamp,input_tokens,output_tokens\nsoon,2,3\n", "request 1"),
        ("timestamp,input_tokens,output_tokens\n1,2,-3\n", "non-negative"),
    ],
)
def test_bad_traces_get_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(MoelessError) as info:
        load_trace(path)
    assert fragment in str(info.value)


def test_unknown_trace_lists_builtins():
    with pytest.raises(MoelessError, match="azure-conv"):
        load_trace("no-such-trace")
