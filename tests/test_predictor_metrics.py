"""Predictor metrics on hand-computed cases, and the request split."""

import numpy as np
import pytest

from moeless_cli.errors import MoelessError
from moeless_cli.predictor.history import ema_prior
from moeless_cli.predictor.metrics import (
    counts_from_topk,
    load_fractions,
    load_metrics,
    load_pearson,
    load_tvd,
    straggler_count,
    straggler_recall,
    topk_recall,
)
from moeless_cli.predictor.samples import iteration_batches, split_by_request


def test_topk_recall_counts_intersections():
    true = np.array([[0, 1], [2, 3]])
    pred = np.array([[1, 5], [3, 2]])  # 1 of 2, then 2 of 2
    assert topk_recall(pred, true) == pytest.approx(3 / 4)
    assert topk_recall(true, true) == 1.0
    assert np.isnan(topk_recall(np.zeros((0, 2), int), np.zeros((0, 2), int)))


def test_counts_and_fractions():
    assert counts_from_topk(np.array([[0, 1], [1, 3]]), 4).tolist() == [1, 2, 0, 1]
    fractions = load_fractions(np.array([[1.0, 3.0], [0.0, 0.0]]))
    assert fractions.tolist() == [[0.25, 0.75], [0.5, 0.5]]


def test_tvd_hand_computed():
    pred = np.array([[1.0, 1.0, 0.0, 0.0]])
    true = np.array([[0.0, 2.0, 2.0, 0.0]])  # fractions .5 .5 0 0 vs 0 .5 .5 0
    assert load_tvd(pred, true)[0] == pytest.approx(0.5)
    assert load_tvd(true * 3, true)[0] == pytest.approx(0.0)  # scale does not matter


def test_pearson_and_constant_rows():
    true = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    pred = np.array([[2.0, 4.0, 6.0], [5.0, 5.0, 5.0]])
    assert load_pearson(pred, true).tolist() == pytest.approx([1.0, 0.0])
    assert load_pearson(-pred[:1], true[:1])[0] == pytest.approx(-1.0)


def test_straggler_recall():
    assert straggler_count(8) == 1 and straggler_count(64) == 6 and straggler_count(3) == 1
    true = np.array([[0, 0, 9, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 1]], dtype=float)
    pred = np.array([[0, 0, 5, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 3]], dtype=float)
    assert straggler_recall(pred, true).tolist() == [1.0, 0.0]
    true64 = np.arange(64, dtype=float)[None]  # stragglers are experts 58..63
    pred64 = true64.copy()
    pred64[0, 63] = 0  # drop one of six from the predicted top
    assert straggler_recall(pred64, true64)[0] == pytest.approx(5 / 6)


def test_load_metrics_averages_batches():
    true = np.array([[2.0, 0.0], [0.0, 2.0]])
    metrics = load_metrics(np.array([[2.0, 0.0], [2.0, 0.0]]), true)
    assert metrics["load_tvd"] == pytest.approx(0.5)
    assert metrics["straggler_recall"] == pytest.approx(0.5)


def test_ema_prior_uses_only_earlier_iterations():
    load = np.array([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    prior = ema_prior(load, alpha=0.5)
    assert prior[0].tolist() == [0.5, 0.5]  # no history: uniform
    assert prior[1].tolist() == [1.0, 0.0]  # first observation taken as is
    assert prior[2].tolist() == [0.5, 0.5]
    assert ema_prior(load, alpha=1.0)[2].tolist() == [0.0, 1.0]  # "last"


def test_split_by_request_keeps_requests_whole():
    requests = np.repeat(np.arange(10), 5)
    train, test = split_by_request(requests, 0.7, seed=3)
    assert not set(requests[train]) & set(requests[test])
    assert len(set(requests[train])) == 7 and len(set(requests[test])) == 3
    again, _ = split_by_request(requests, 0.7, seed=3)
    assert (again == train).all()
    with pytest.raises(MoelessError):
        split_by_request(np.zeros(5, int), 0.7, seed=0)


def test_iteration_batches_groups_in_order():
    iterations, batches = iteration_batches(np.array([3, 1, 3, 0, 1]))
    assert iterations.tolist() == [0, 1, 3]
    assert [b.tolist() for b in batches] == [[3], [1, 4], [0, 2]]
