"""Ranking metrics against cases worked by hand, including users without a peek."""

from __future__ import annotations

import math

import pytest

from model.metrics import (
    auc,
    average_precision_at_k,
    mean_over_users,
    ndcg_at_k,
    peek_rate_ratio_at_k,
    ranked_labels,
    reciprocal_rank,
)

# Ranked by score the labels read 1, 0, 1, 0, 0: peeks at ranks 1 and 3 of 5 candidates.
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
LABELS = [1, 0, 1, 0, 0]


def test_average_precision_by_hand():
    # AP@10 = (P(1) + P(3)) / min(2, 10) = (1 + 2/3) / 2
    assert average_precision_at_k(SCORES, LABELS, 10) == pytest.approx((1 + 2 / 3) / 2)
    # AP@2 counts one hit at rank 1 and divides by min(2 peeks, k = 2)
    assert average_precision_at_k(SCORES, LABELS, 2) == pytest.approx(0.5)
    # AP@1 divides by min(2, 1) = 1
    assert average_precision_at_k(SCORES, LABELS, 1) == pytest.approx(1.0)


def test_average_precision_ignores_input_order():
    shuffled = [2, 0, 4, 1, 3]
    scores = [SCORES[i] for i in shuffled]
    labels = [LABELS[i] for i in shuffled]
    assert average_precision_at_k(scores, labels, 10) == pytest.approx((1 + 2 / 3) / 2)


def test_peek_rate_ratio_by_hand():
    # top 2 peek rate 1/2 over the overall rate 2/5
    assert peek_rate_ratio_at_k(SCORES, LABELS, 2) == pytest.approx(1.25)
    assert peek_rate_ratio_at_k(SCORES, LABELS, 1) == pytest.approx(2.5)
    # k beyond the candidate count takes every candidate: ratio 1
    assert peek_rate_ratio_at_k(SCORES, LABELS, 50) == pytest.approx(1.0)


def test_reciprocal_rank_averages_every_peek():
    # MIND's MRR: mean of 1/rank over the peeked items, ranks 1 and 3
    assert reciprocal_rank(SCORES, LABELS) == pytest.approx((1 + 1 / 3) / 2)
    assert reciprocal_rank([0.1, 0.9], [1, 0]) == pytest.approx(0.5)


def test_ndcg_by_hand():
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(SCORES, LABELS, 10) == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert ndcg_at_k(SCORES, LABELS, 2) == pytest.approx(1 / ideal)
    assert ndcg_at_k([0.2, 0.1], [1, 0], 10) == pytest.approx(1.0)


def test_auc_by_hand():
    # peeks score 0.9 and 0.7; 0.9 beats all 3 non-peeks, 0.7 beats 2 of 3
    assert auc(SCORES, LABELS) == pytest.approx(5 / 6)
    assert auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "function",
    [
        lambda s, y: average_precision_at_k(s, y, 10),
        lambda s, y: peek_rate_ratio_at_k(s, y, 10),
        reciprocal_rank,
        lambda s, y: ndcg_at_k(s, y, 10),
        auc,
    ],
    ids=["map", "mprr", "mrr", "ndcg", "auc"],
)
def test_user_without_peek_is_undefined(function):
    assert function([0.3, 0.2, 0.1], [0, 0, 0]) is None


def test_auc_undefined_when_all_peeked():
    assert auc([0.3, 0.2], [1, 1]) is None
    assert average_precision_at_k([0.3, 0.2], [1, 1], 10) == pytest.approx(1.0)


def test_ties_keep_input_order():
    assert ranked_labels([0.5, 0.5, 0.5], [0, 1, 0]).tolist() == [0, 1, 0]
    assert average_precision_at_k([0.5, 0.5, 0.5], [0, 1, 0], 3) == pytest.approx(0.5)


def test_mean_over_users_skips_users_without_peek():
    users = [([0.9, 0.1], [1, 0]), ([0.9, 0.1], [0, 0]), ([0.9, 0.1], [0, 1])]
    result = mean_over_users(average_precision_at_k(s, y, 10) for s, y in users)
    assert result.value == pytest.approx((1.0 + 0.5) / 2)
    assert result.users == 2
    assert result.users_skipped == 1


def test_mean_over_users_all_undefined_is_nan():
    result = mean_over_users([None, None])
    assert math.isnan(result.value)
    assert result.users == 0


@pytest.mark.parametrize("function", [average_precision_at_k, peek_rate_ratio_at_k, ndcg_at_k])
def test_cutoff_below_one_rejected(function):
    with pytest.raises(ValueError, match="k must be at least 1"):
        function(SCORES, LABELS, 0)


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        ranked_labels([0.1, 0.2], [1])
