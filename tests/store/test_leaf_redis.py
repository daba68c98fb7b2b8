"""A leaf reading its profiles from Redis: the local cache, misses, refresh on a new version."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fmlite.sharding import shard_of
from leaf.cache import ENTRY_OVERHEAD_BYTES, UserCache, estimated_bytes_per_user
from leaf.service import LeafConfig, LeafHandler
from leaf.store import RedisStoreConfig
from model.publish import publish_snapshot
from rpc.idl import fmlite_thrift as T
from store_fixtures import make_snapshot


def leaf(url, prefix, *, shard=0, max_cached_users=1000, profiles=None, **options):
    config = LeafConfig(
        shard=shard,
        num_shards=2,
        profiles=profiles,
        redis=RedisStoreConfig(url=url, prefix=prefix, max_cached_users=max_cached_users, **options),
        reload_interval_s=0,
    )
    handler = LeafHandler(config, registry=CollectorRegistry())
    handler.load()
    return handler


def in_shard(user_ids, shard=0):
    return [user_id for user_id in user_ids if shard_of(user_id, 2) == shard]


def sample(handler, name):
    return handler.metrics.cache_hits._value.get() if name == "hits" else handler.metrics.cache_misses._value.get()


async def test_redis_leaf_scores_like_file_leaf(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, users=80)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    from_redis = leaf(redis_server.url, prefix)
    from_files = LeafHandler(LeafConfig(shard=0, num_shards=2, profiles=str(tmp_path), reload_interval_s=0), registry=CollectorRegistry())
    from_files.load()
    assert from_redis.state.profiles.source == "redis"
    assert from_redis.state.profiles.users.complete
    for user_id in in_shard(user_ids)[:5] + ["never-seen-0"] * (shard_of("never-seen-0", 2) == 0):
        request = T.PredictRequest(user_id=user_id, glance_ids=glance_ids[:12] + ["unknown-glance"], variant="cosine")
        a = await from_redis.predict(request)
        b = await from_files.predict(request)
        assert a.scores == b.scores
        assert a.flags == b.flags
        assert a.profile_version == b.profile_version == "1"
    assert from_redis.readiness() == (True, "ok")
    await from_redis.close()


async def test_bounded_cache_fetches_misses(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, users=200)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    handler = leaf(redis_server.url, prefix, max_cached_users=10)
    users = handler.state.profiles.users
    assert len(users) == 10
    assert not users.complete
    outside = [user_id for user_id in in_shard(user_ids) if user_id not in users.cache][:15]
    misses = sample(handler, "misses")
    first = await handler.predict(T.PredictRequest(user_id=outside[0], glance_ids=glance_ids[:4], variant="cosine"))
    assert not first.cold_start_user
    assert sample(handler, "misses") == misses + 1
    assert outside[0] in users.cache
    hits = sample(handler, "hits")
    again = await handler.predict(T.PredictRequest(user_id=outside[0], glance_ids=glance_ids[:4], variant="cosine"))
    assert again.scores == first.scores
    assert sample(handler, "hits") == hits + 1
    for user_id in outside[1:]:
        await handler.predict(T.PredictRequest(user_id=user_id, glance_ids=glance_ids[:2], variant="cosine"))
    assert len(users) == 10
    assert users.cache.evictions >= 5
    await handler.close()


async def test_user_missing_from_store_is_cold_start(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, users=200)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    handler = leaf(redis_server.url, prefix, max_cached_users=10)
    newcomer = next(f"new-{i}" for i in range(100) if shard_of(f"new-{i}", 2) == 0)
    response = await handler.predict(T.PredictRequest(user_id=newcomer, glance_ids=glance_ids[:3], variant="cosine"))
    assert response.cold_start_user
    assert all(flag & T.FLAG_COLD_START_USER for flag in response.flags)
    assert handler.metrics.outage_cold_starts._value.get() == 0
    assert handler.readiness() == (True, "ok")
    await handler.close()


async def test_new_version_refreshes_cache_and_keeps_hot_users(tmp_path, redis_server, redis_client, prefix):
    first, user_ids, glance_ids = make_snapshot(tmp_path, version=1, users=200)
    publish_snapshot(first, client=redis_client, prefix=prefix)
    handler = leaf(redis_server.url, prefix, max_cached_users=10)
    hot = [user_id for user_id in in_shard(user_ids) if user_id not in handler.state.profiles.users.cache][:3]
    for user_id in hot:
        await handler.predict(T.PredictRequest(user_id=user_id, glance_ids=glance_ids[:2], variant="cosine"))
    old = handler.state
    assert handler.reloader.poll_once(old) is None

    second, _, _ = make_snapshot(tmp_path, version=2, users=200)
    publish_snapshot(second, client=redis_client, prefix=prefix)
    state = handler.reloader.poll_once(old)
    assert state is not None
    handler.install(state)
    assert handler.state.profile_version == "2"
    cache = handler.state.profiles.users.cache
    assert set(hot) <= set(cache.ids_by_recency(3))
    response = await handler.predict(T.PredictRequest(user_id=hot[0], glance_ids=glance_ids[:2], variant="cosine"))
    assert response.profile_version == "2"
    # The old state still scores with version 1, so a request that started on it finishes consistently.
    assert old.profiles.version == "1"
    assert handler.metrics.profile_version_number._value.get() == 2
    await handler.close()


async def test_redis_leaf_rejects_shard_count_mismatch(tmp_path, redis_server, redis_client, prefix):
    directory, _, _ = make_snapshot(tmp_path, num_shards=3)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    with pytest.raises(Exception, match="partitioned into 3 shards"):
        leaf(redis_server.url, prefix)


def test_user_cache_evicts_least_recent():
    cache = UserCache(capacity=3, meta_dim=1, embedding_dim=1, initial_rows=1)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    cache.put_many(["a", "b", "c"], rows[:3])
    assert cache.get("a") is not None  # a becomes the most recent
    cache.put("d", rows[3])
    assert "b" not in cache
    assert cache.ids_by_recency() == ["d", "a", "c"]
    meta, image, text = cache.get("d")
    assert (meta.tolist(), image.tolist(), text.tolist()) == ([9.0], [10.0], [11.0])
    assert cache.nbytes <= 3 * 3 * 4
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        UserCache(capacity=0, meta_dim=1, embedding_dim=1)
    with pytest.raises(ValueError, match="expected"):
        cache.put_many(["x"], np.zeros((1, 5)))


def test_memory_estimate_per_user():
    # 145 meta columns and 384-wide embeddings: 913 float32 values plus the map entry.
    assert estimated_bytes_per_user(145, 384) == 4 * 913 + ENTRY_OVERHEAD_BYTES
    assert 4.0e9 < 1_000_000 * estimated_bytes_per_user(145, 384) < 4.5e9


async def test_deleted_version_misses_counted_as_outage(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, version=1, users=200)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    handler = leaf(redis_server.url, prefix, max_cached_users=10)
    # Two newer versions are published while this leaf keeps version 1, so version 1 is deleted.
    for version in (2, 3):
        newer, _, _ = make_snapshot(tmp_path, version=version, users=200)
        publish_snapshot(newer, client=redis_client, prefix=prefix, keep_versions=1)
    assert not redis_client.exists(f"{prefix}:v1:manifest")
    uncached = next(u for u in in_shard(user_ids) if u not in handler.state.profiles.users.cache)
    response = await handler.predict(T.PredictRequest(user_id=uncached, glance_ids=glance_ids[:2], variant="cosine"))
    assert response.cold_start_user
    assert response.profile_version == "1"
    assert handler.metrics.outage_cold_starts._value.get() == 1
    await handler.close()
