"""Bootstrap intervals over users: point values, coverage width, pairing and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from model.bootstrap import Interval, UserBootstrap


def test_mean_interval_brackets_value():
    interval = UserBootstrap(5, resamples=400, seed=1).mean(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert interval.value == pytest.approx(3.0)
    assert 1.0 <= interval.low <= 3.0 <= interval.high <= 5.0
    assert interval.count == 5


def test_undefined_users_left_out_of_value():
    interval = UserBootstrap(4, resamples=100, seed=0).mean(np.array([1.0, np.nan, 3.0, np.nan]))
    assert interval.value == pytest.approx(2.0)
    assert interval.count == 2


def test_ratio_pools_sums_and_counts():
    # Per-impression metrics: user totals over user impression counts.
    interval = UserBootstrap(3, resamples=100, seed=0).ratio(np.array([2.0, 0.0, 3.0]), np.array([1.0, 0.0, 2.0]))
    assert interval.value == pytest.approx(5.0 / 3.0)
    assert interval.count == 2


def test_width_matches_normal_approximation():
    rng = np.random.default_rng(5)
    values = rng.normal(0.4, 0.3, size=4000)
    interval = UserBootstrap(len(values), resamples=1000, seed=2).mean(values)
    expected_half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    half_width = (interval.high - interval.low) / 2
    assert half_width == pytest.approx(expected_half_width, rel=0.15)


def test_paired_difference_of_identical_models_is_zero():
    values = np.random.default_rng(0).random(50)
    interval = UserBootstrap(50, resamples=200, seed=0).difference(values, values)
    assert interval.value == 0.0
    assert interval.low == 0.0
    assert interval.high == 0.0


def test_paired_difference_narrower_than_separate_intervals():
    rng = np.random.default_rng(1)
    shared = rng.random(2000)
    better = shared + 0.02 + rng.normal(0, 0.01, 2000)
    bootstrap = UserBootstrap(2000, resamples=500, seed=3)
    paired = bootstrap.difference(better, shared)
    separate = bootstrap.mean(better), bootstrap.mean(shared)
    assert paired.low > 0
    assert paired.high - paired.low < (separate[0].high - separate[0].low)


def test_same_seed_same_interval():
    values = np.random.default_rng(4).random(30)
    first = UserBootstrap(30, resamples=100, seed=9).mean(values)
    second = UserBootstrap(30, resamples=100, seed=9).mean(values)
    assert first == second


def test_overlap_check():
    assert Interval(0.5, 0.4, 0.6, 10).overlaps(Interval(0.65, 0.6, 0.7, 10))
    assert not Interval(0.5, 0.4, 0.59, 10).overlaps(Interval(0.65, 0.6, 0.7, 10))


def test_interval_json_replaces_nan():
    assert Interval(float("nan"), float("nan"), float("nan"), 0).to_json() == {"value": None, "low": None, "high": None, "count": 0}


def test_wrong_length_rejected():
    with pytest.raises(ValueError, match="one entry per user"):
        UserBootstrap(3, resamples=20).mean(np.array([1.0, 2.0]))


@pytest.mark.parametrize(("users", "resamples", "confidence"), [(0, 100, 0.95), (3, 5, 0.95), (3, 100, 1.0)])
def test_invalid_settings_rejected(users, resamples, confidence):
    with pytest.raises(ValueError):
        UserBootstrap(users, resamples=resamples, confidence=confidence)
