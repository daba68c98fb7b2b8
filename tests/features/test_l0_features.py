"""Combined variants, exploration and config reload at a real L0 in front of real L1s and leaves."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.request

import numpy as np
import pytest

from feature_setup import BLEND_TRAFFIC, SHARDS, run_fmlite, wait_until
from fmlite.glance_stats import STATS_FILE, read_glance_stats
from fmlite.sharding import shard_of
from rpc.client import ThriftHttpClient
from rpc.idl import fmlite_thrift as T

YEAR_MS = 365 * 24 * 3_600_000
FRESH_IDS = [f"N-fresh-{index}" for index in range(5)]


def predict(address, **arguments):
    async def run():
        client = ThriftHttpClient(address)
        try:
            return await client.predict(T.PredictRequest(timeout_ms=8000, **arguments), timeout_s=10)
        finally:
            await client.close()

    return asyncio.run(run())


def health(address):
    async def run():
        client = ThriftHttpClient(address)
        try:
            return await client.health(timeout_s=5)
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def request_case(feature_platform, served_snapshot):
    _, glances, users = served_snapshot
    user = str(users[0].ids[0])
    glance_ids = [str(g) for g in glances.ids[:25]] + FRESH_IDS
    stats = read_glance_stats(feature_platform.root / "profiles" / str(feature_platform.profile_version) / STATS_FILE)
    # A year after the statistics end, every glance in them is old; only the unknown ids are fresh.
    return user, glance_ids, stats.as_of_ms + YEAR_MS, stats


def leaf_scores(feature_platform, user, glance_ids, variant):
    return predict(feature_platform.leaf_of_shard(shard_of(user, SHARDS)), user_id=user, glance_ids=glance_ids, variant=variant)


def test_blend_carries_variant_scores(feature_platform, request_case):
    user, glance_ids, now_ms, _ = request_case
    response = predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_id="blend-1", request_time_ms=now_ms)
    fmlite = leaf_scores(feature_platform, user, glance_ids, "fmlite")
    cosine = leaf_scores(feature_platform, user, glance_ids, "cosine")

    assert response.variant == "blend"
    assert response.bucket == "fresh"
    assert response.variant_scores == {"fmlite": fmlite.scores, "cosine": cosine.scores}
    np.testing.assert_allclose(response.scores_before_exploration, 0.7 * np.array(fmlite.scores) + 0.3 * np.array(cosine.scores), atol=1e-12)
    assert response.model_version == f"fmlite={fmlite.model_version},cosine={cosine.model_version}"
    assert response.unknown_glances == len(FRESH_IDS)


def test_epsilon_greedy_promotes_one_fresh_glance(feature_platform, request_case):
    user, glance_ids, now_ms, stats = request_case
    response = predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_id="explore-1", request_time_ms=now_ms)

    before = np.array(response.scores_before_exploration)
    after = np.array(response.scores)
    flags = np.frombuffer(response.flags, dtype=np.uint8)
    explored = np.flatnonzero(flags & T.FLAG_EXPLORED)
    fresh = np.array([gid in FRESH_IDS for gid in glance_ids])
    ranks_before = np.argsort(np.argsort(-before, kind="stable"), kind="stable")
    assert np.any(fresh & (ranks_before >= 3)), "the case needs a fresh glance outside the slate"

    assert len(explored) == 1
    assert response.explored_positions == 1
    position = explored[0]
    assert fresh[position]
    assert ranks_before[position] >= 3
    assert np.argsort(np.argsort(-after, kind="stable"), kind="stable")[position] < 3
    assert flags[position] & T.FLAG_UNKNOWN_GLANCE
    unchanged = np.arange(len(glance_ids)) != position
    assert np.array_equal(after[unchanged], before[unchanged])
    assert response.request_time_ms == now_ms
    assert response.glance_stats_version == stats.version


def test_logged_request_replays_identically(feature_platform, request_case):
    user, glance_ids, now_ms, _ = request_case
    first = predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_id="replay-7", request_time_ms=now_ms)
    again = predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_id="replay-7", request_time_ms=now_ms)
    assert again.scores == first.scores
    assert again.flags == first.flags


def test_explored_positions_are_counted(feature_platform, request_case):
    user, glance_ids, now_ms, _ = request_case
    predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_id="count-1", request_time_ms=now_ms)
    port = feature_platform.platform.server("l0").port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    line = next(line for line in text.splitlines() if line.startswith('fmlite_explored_positions_total{bucket="fresh"}'))
    assert float(line.split()[-1]) >= 1


def test_named_variant_skips_exploration(feature_platform, request_case):
    user, glance_ids, now_ms, _ = request_case
    response = predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, variant="fmlite", request_time_ms=now_ms)
    assert response.scores == leaf_scores(feature_platform, user, glance_ids, "fmlite").scores
    assert response.variant_scores is None
    assert response.scores_before_exploration is None
    assert response.explored_positions is None


def test_predict_command_shows_bucket_and_exploration(feature_platform, request_case):
    user, glance_ids, _, _ = request_case
    address = feature_platform.platform.l0_address
    as_json = run_fmlite("predict", "--address", address, "--user", user, "--glances", ",".join(glance_ids), "--json", timeout_s=120)
    assert as_json.code == 0, as_json.output
    response = json.loads(as_json.output.strip().splitlines()[-1])
    assert response["bucket"] == "fresh"
    assert response["explored_positions"] == 1
    assert len(response["scores_before_exploration"]) == len(glance_ids)
    assert sorted(response["variant_scores"]) == ["cosine", "fmlite"]
    assert response["glance_stats_version"]

    as_text = run_fmlite("predict", "--address", address, "--user", user, "--glances", ",".join(glance_ids), timeout_s=120)
    assert as_text.code == 0, as_text.output
    assert "# bucket fresh, explored positions 1" in as_text.output
    assert as_text.output.count("explored)") + as_text.output.count("explored,") == 1


def test_predict_command_refuses_an_empty_glance_list(feature_platform):
    result = run_fmlite("predict", "--address", feature_platform.platform.l0_address, "--user", "U1", "--glances", ",,", timeout_s=120)
    assert result.code == 2
    assert "names no glance id" in result.output


def test_negative_request_time_is_invalid(feature_platform, request_case):
    user, glance_ids, _, _ = request_case
    with pytest.raises(T.InvalidRequest) as caught:
        predict(feature_platform.platform.l0_address, user_id=user, glance_ids=glance_ids, request_time_ms=-5)
    assert caught.value.field == "request_time_ms"


def test_health_lists_l1_of_each_shard(feature_platform):
    details = health(feature_platform.platform.l0_address).details
    for shard in range(SHARDS):
        assert details[f"l1_shard_{shard}"] == feature_platform.platform.server(f"l1-{shard}").address
    assert details["glance_stats_version"] == f"sample-{feature_platform.profile_version}"


def test_traffic_config_reloads_without_restart(feature_platform, request_case):
    user, glance_ids, now_ms, _ = request_case
    l0 = feature_platform.platform.l0_address
    old_version = health(l0).details["traffic_version"]
    rerank = copy.deepcopy(BLEND_TRAFFIC)
    rerank["buckets"] = [{"name": "reranked", "fraction": 1.0, "variant": "cosine_by_fmlite"}]
    try:
        feature_platform.write_traffic(rerank)
        wait_until(lambda: health(l0).details["traffic_version"] != old_version, message="L0 reloads the traffic config")

        response = predict(l0, user_id=user, glance_ids=glance_ids, request_time_ms=now_ms)
        assert response.variant == "cosine_by_fmlite"
        assert response.bucket == "reranked"
        assert response.explored_positions is None
        cosine = np.array(response.variant_scores["cosine"])
        fmlite = np.array(response.variant_scores["fmlite"])
        served = np.array(response.scores)
        top = np.argsort(-cosine, kind="stable")[:5]
        served_order = np.argsort(-served, kind="stable")
        assert set(served_order[:5].tolist()) == set(top.tolist())
        assert np.all(np.diff(fmlite[served_order[:5]]) <= 0)
        assert np.all(np.diff(served[served_order[:5]]) < 0)
        rest = np.setdiff1d(np.arange(len(served)), top)
        assert served[rest].max() < served[top].min()
        np.testing.assert_allclose(served[rest], cosine[rest], atol=1e-9)

        broken = copy.deepcopy(rerank)
        broken["variants"]["blend"]["weights"] = {"fmlite": 0.7, "cosine": 0.2}
        feature_platform.write_traffic(broken)
        error = wait_until(lambda: health(l0).details.get("traffic_error"), message="L0 reports the rejected config")
        assert "variants.blend.weights sum to 0.900000" in error
        assert predict(l0, user_id=user, glance_ids=glance_ids).variant == "cosine_by_fmlite"
    finally:
        feature_platform.write_traffic(BLEND_TRAFFIC)
        wait_until(lambda: "traffic_error" not in health(l0).details and health(l0).details["traffic_version"] == old_version,
                   message="L0 returns to the first config")


def test_up_warns_about_unreadable_glance_statistics(feature_platform):
    from fmlite.launcher import l0_config_warnings

    l0 = feature_platform.platform.l0_address
    assert l0_config_warnings(l0) == []
    loaded = health(l0).details["glance_stats_version"]
    missing = copy.deepcopy(BLEND_TRAFFIC)
    missing["glance_stats"] = {"path": "no-such-profiles", "reload_interval_s": 1}
    try:
        feature_platform.write_traffic(missing)
        wait_until(lambda: health(l0).details.get("glance_stats_error"), message="L0 reports the missing statistics")
        warnings = l0_config_warnings(l0)
        assert len(warnings) == 1
        assert "no-such-profiles" in warnings[0]
        assert warnings[0].endswith(f"it keeps version {loaded}")
    finally:
        feature_platform.write_traffic(BLEND_TRAFFIC)
        wait_until(lambda: "glance_stats_error" not in health(l0).details, message="L0 reads the statistics again")


def test_warning_without_any_statistics_says_exploration_is_skipped():
    from fmlite.launcher import config_warnings

    lines = config_warnings({"glance_stats_version": "none", "glance_stats_error": "glance statistics not found: /x"})
    assert lines == ["warning: L0 has no glance statistics (glance statistics not found: /x); exploration buckets skip exploring until the file can be read"]
    assert config_warnings({"traffic_error": "bad weights"}) == ["warning: L0 rejected the traffic config and kept the last good one: bad weights"]
