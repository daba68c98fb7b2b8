"""Exploration policies: seeded per request, promote only fresh or little-shown glances, flag what they move."""

from __future__ import annotations

import numpy as np
import pytest

from controller.explore import EpsilonGreedy, ThompsonSampling, apply_policy
from controller.traffic import TrafficConfigError, TrafficSplit
from fmlite.glance_stats import GlanceStats

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
OLD = [f"old{i}" for i in range(20)]
YOUNG = [f"young{i}" for i in range(5)]
IDS = OLD + YOUNG + ["unknown0", "unknown1"]
SCORES = np.linspace(0.9, 0.1, len(IDS))


@pytest.fixture(scope="module")
def stats():
    # Old glances: first seen 48 h ago, 100,000 impressions each at a 5% peek rate; young: 1 h ago, 3 impressions.
    return GlanceStats(
        version="t1",
        as_of_ms=NOW_MS,
        ids=np.array(OLD + YOUNG),
        first_seen_ms=np.array([NOW_MS - 48 * HOUR_MS] * len(OLD) + [NOW_MS - HOUR_MS] * len(YOUNG), dtype=np.int64),
        impressions=np.array([100_000] * len(OLD) + [3] * len(YOUNG), dtype=np.int64),
        peeks=np.array([5000] * len(OLD) + [0] * len(YOUNG), dtype=np.int64),
    )


def run(policy, stats, request_id, scores=SCORES, ids=IDS):
    return apply_policy(policy, scores=scores, glance_ids=ids, stats=stats, now_ms=NOW_MS, request_id=request_id, salt="bucket")


def test_same_request_id_gives_same_result(stats):
    policy = EpsilonGreedy(epsilon=0.5, max_age_hours=6, slate_size=5, max_promotions=2)
    for request_id in ("a", "b", "c"):
        first, second = run(policy, stats, request_id), run(policy, stats, request_id)
        np.testing.assert_array_equal(first.scores, second.scores)
        np.testing.assert_array_equal(first.explored, second.explored)


def test_epsilon_greedy_promotes_only_fresh_glances(stats):
    policy = EpsilonGreedy(epsilon=1.0, max_age_hours=6, slate_size=5, max_promotions=2)
    fresh = np.array([gid in YOUNG or gid.startswith("unknown") for gid in IDS])
    for request in range(50):
        result = run(policy, stats, f"r{request}")
        assert result.explored_count == 2
        assert np.all(fresh[result.explored])
        ranks = np.argsort(np.argsort(-result.scores, kind="stable"), kind="stable")
        assert np.all(ranks[result.explored] < 5)
        moved = result.scores != SCORES
        np.testing.assert_array_equal(moved, result.explored)


def test_epsilon_share_of_requests_explores(stats):
    policy = EpsilonGreedy(epsilon=0.2, max_age_hours=6, slate_size=5)
    explored = sum(run(policy, stats, f"share-{request}").explored_count > 0 for request in range(2000))
    assert 320 <= explored <= 480


def test_epsilon_zero_never_explores(stats):
    policy = EpsilonGreedy(epsilon=0.0, max_age_hours=6, slate_size=5)
    for request in range(20):
        result = run(policy, stats, f"z{request}")
        assert result.explored_count == 0
        np.testing.assert_array_equal(result.scores, SCORES)


def test_no_fresh_glance_outside_slate(stats):
    # The 7 fresh glances hold the 7 highest scores, so all of them are in the slate already.
    policy = EpsilonGreedy(epsilon=1.0, max_age_hours=6, slate_size=7)
    scores = np.linspace(0.1, 0.9, len(IDS))
    result = run(policy, stats, "top", scores=scores)
    assert result.explored_count == 0
    np.testing.assert_array_equal(result.scores, scores)


def test_promotion_to_first_slot_stays_a_probability(stats):
    policy = EpsilonGreedy(epsilon=1.0, max_age_hours=6, slate_size=1)
    result = run(policy, stats, "first")
    assert result.explored_count == 1
    assert SCORES.max() < result.scores.max() <= 1.0


def test_thompson_leaves_well_known_glances_alone(stats):
    policy = ThompsonSampling(prior_strength=2, slate_size=5)
    old = np.array([gid in OLD for gid in IDS])
    changes = []
    for request in range(200):
        result = run(policy, stats, f"t{request}")
        changes.append(np.abs(result.scores - SCORES))
        assert not np.any(result.explored & old)
    changes = np.array(changes)
    assert changes[:, old].max() < 0.02
    assert changes[:, ~old].mean() > 0.02


def test_thompson_promotes_little_shown_glances_sometimes(stats):
    # A weak prior (2 pseudo-impressions) lets a glance with 0 to 3 impressions jump into the slate.
    policy = ThompsonSampling(prior_strength=2, slate_size=5)
    explored = [run(policy, stats, f"p{request}").explored_count for request in range(300)]
    assert 0 < sum(count > 0 for count in explored) < 300


def test_empty_request_is_unchanged(stats):
    result = apply_policy(ThompsonSampling(), scores=[], glance_ids=[], stats=stats, now_ms=NOW_MS, request_id="e", salt="s")
    assert result.explored_count == 0
    assert len(result.scores) == 0


BASE = {"variants": {"fmlite": {}}, "glance_stats": {"path": "stats.npz"}}


@pytest.mark.parametrize(
    "explore, message",
    [
        ({"policy": "epsilon_greedy", "epsilon": 1.5, "max_age_hours": 6}, r"buckets\[0\].explore.epsilon must be in \[0.0, 1.0\]"),
        ({"policy": "epsilon_greedy", "epsilon": 0.1}, r"buckets\[0\].explore.max_age_hours is missing"),
        ({"policy": "epsilon_greedy", "epsilon": 0.1, "max_age_hours": 0}, r"max_age_hours must be in \(0.0"),
        ({"policy": "epsilon_greedy", "epsilon": 0.1, "max_age_hours": 6, "slate_size": 2, "max_promotions": 3}, r"max_promotions must be an integer in \[1, 2\]"),
        ({"policy": "thompson", "prior_strength": 0}, r"prior_strength must be in \(0.0"),
        ({"policy": "thompson", "epsilon": 0.1}, r"buckets\[0\].explore has unknown keys \['epsilon'\]"),
        ({"policy": "ucb"}, r"buckets\[0\].explore.policy must be one of"),
        ("greedy", r"buckets\[0\].explore must be an object"),
    ],
)
def test_invalid_policy_names_key(explore, message):
    raw = {**BASE, "buckets": [{"name": "b", "fraction": 1.0, "variant": "fmlite", "explore": explore}]}
    with pytest.raises(TrafficConfigError, match=message):
        TrafficSplit.from_dict(raw)


def test_policy_needs_glance_stats():
    raw = {"variants": {"fmlite": {}}, "buckets": [{"name": "b", "fraction": 1.0, "variant": "fmlite", "explore": {"policy": "thompson"}}]}
    with pytest.raises(TrafficConfigError, match=r"buckets\[0\].explore needs glance statistics"):
        TrafficSplit.from_dict(raw)


def test_relative_stats_path_follows_config_dir(tmp_path):
    raw = {**BASE, "buckets": [{"name": "b", "fraction": 1.0, "variant": "fmlite", "explore": {"policy": "thompson"}}]}
    split = TrafficSplit.from_dict(raw, base_dir=tmp_path)
    assert split.glance_stats.path == tmp_path / "stats.npz"
    assert split.buckets[0].explore == ThompsonSampling()
