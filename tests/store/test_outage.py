"""Redis down or silent: the leaf keeps serving from its cache, times out fast and recovers."""

import time

import pytest
from prometheus_client import CollectorRegistry

from fmlite.redis_server import free_loopback_port
from fmlite.sharding import shard_of
from leaf.service import LeafConfig, LeafHandler
from leaf.store import RedisProfileSource, RedisStoreConfig, StoreUnavailable
from model.publish import connect, publish_snapshot
from rpc.idl import fmlite_thrift as T
from store_fixtures import SilentServer, make_snapshot

# Short timeouts keep the test fast and show that nothing waits longer than configured.
TIMEOUTS = {"connect_timeout_s": 0.1, "socket_timeout_s": 0.1, "bulk_timeout_s": 2.0, "probe_interval_s": 0.3}


def make_leaf(url, *, profiles=None, max_cached_users=10):
    config = LeafConfig(
        shard=0, num_shards=2, profiles=profiles, reload_interval_s=0,
        redis=RedisStoreConfig(url=url, prefix="fmlite:profiles", max_cached_users=max_cached_users, **TIMEOUTS),
    )
    handler = LeafHandler(config, registry=CollectorRegistry())
    handler.load()
    return handler


def published(tmp_path, server, users=200):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, users=users)
    client = connect(server.url)
    publish_snapshot(directory, client=client)
    client.close()
    return [u for u in user_ids if shard_of(u, 2) == 0], glance_ids


async def timed_predict(handler, user_id, glance_ids):
    started = time.monotonic()
    response = await handler.predict(T.PredictRequest(user_id=user_id, glance_ids=glance_ids, variant="cosine"))
    return response, time.monotonic() - started


async def test_stopped_redis_serves_cached_users_and_flags_others(tmp_path, own_redis):
    users, glances = published(tmp_path, own_redis)
    handler = make_leaf(own_redis.url)
    cached = handler.state.profiles.users.cache.ids_by_recency()
    uncached = [u for u in users if u not in cached]
    before, _ = await timed_predict(handler, cached[0], glances[:5])

    own_redis.stop()
    during, seconds = await timed_predict(handler, cached[0], glances[:5])
    assert during.scores == before.scores
    assert not during.cold_start_user
    assert seconds < 0.5

    missing, seconds = await timed_predict(handler, uncached[0], glances[:5])
    assert missing.cold_start_user
    assert all(flag & T.FLAG_COLD_START_USER for flag in missing.flags)
    assert seconds < 0.5
    assert handler.metrics.outage_cold_starts._value.get() == 1
    assert handler.readiness() == (True, "degraded")
    health = await handler.health()
    assert health.status == "degraded"
    assert health.details["store"] == "unavailable"
    # The reloader's poll finds Redis still down and keeps the state.
    assert handler.reloader.poll_once(handler.state) is None
    assert handler.state.profile_version == "1"
    await handler.close()


async def test_silent_redis_times_out_then_recovers(tmp_path, own_redis):
    users, glances = published(tmp_path, own_redis)
    handler = make_leaf(own_redis.url)
    cached = set(handler.state.profiles.users.cache.ids_by_recency())
    uncached = [u for u in users if u not in cached]

    own_redis.pause()  # the port still accepts connections, nothing answers
    first, seconds = await timed_predict(handler, uncached[0], glances[:3])
    assert first.cold_start_user
    assert seconds < 0.5, "one lookup may wait for the socket timeout only"
    # Within the probe interval a lookup does not call Redis at all.
    second, seconds = await timed_predict(handler, uncached[1], glances[:3])
    assert second.cold_start_user
    assert seconds < 0.05
    started = time.monotonic()
    assert handler.reloader.poll_once(handler.state) is None
    assert time.monotonic() - started < 0.5
    assert handler.readiness() == (True, "degraded")
    assert handler.metrics.outage_cold_starts._value.get() == 2

    own_redis.resume()
    time.sleep(TIMEOUTS["probe_interval_s"])
    recovered, _ = await timed_predict(handler, uncached[2], glances[:3])
    assert not recovered.cold_start_user
    assert handler.readiness() == (True, "ok")
    await handler.close()


async def test_timed_out_connections_are_not_reused():
    silent = SilentServer()
    try:
        store = RedisProfileSource(RedisStoreConfig(url=silent.url, **{**TIMEOUTS, "probe_interval_s": 0.01}), shard=0, num_shards=2)
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="Timeout"):
                store.published_version()
            assert time.monotonic() - started < 0.5
        assert not store.available
        assert len(silent.accepted) == 3, "each call after a timeout must open a new connection"
        assert not store.ping()
        assert len(silent.accepted) == 4
        store.close()
    finally:
        silent.close()


async def test_async_lookup_timeouts_open_new_connections(tmp_path, own_redis):
    users, glances = published(tmp_path, own_redis)
    handler = make_leaf(own_redis.url)
    profiles = handler.state.profiles
    silent = SilentServer()
    try:
        store = RedisProfileSource(RedisStoreConfig(url=silent.url, **{**TIMEOUTS, "probe_interval_s": 0.01}), shard=0, num_shards=2)
        for _ in range(2):
            time.sleep(0.02)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.fetch_user(profiles, users[0])
            assert time.monotonic() - started < 0.5
        assert len(silent.accepted) == 2
        await store.aclose()
        store.close()
    finally:
        silent.close()
    await handler.close()


def test_start_without_redis_uses_file_snapshot(tmp_path):
    make_snapshot(tmp_path)
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"
    handler = make_leaf(url, profiles=str(tmp_path))
    assert handler.state.profiles.source == "files"
    assert handler.state.profile_version == "1"
    assert handler.readiness() == (True, "degraded")
    assert handler.metrics.store_errors.labels(tier="leaf", operation="read version pointer")._value.get() == 1


def test_start_without_redis_or_files_fails(tmp_path):
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="read version pointer"):
        make_leaf(url)
    assert time.monotonic() - started < 1.0


def test_invalid_store_settings_rejected():
    with pytest.raises(ValueError, match="invalid Redis URL"):
        RedisStoreConfig(url="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="socket_timeout_s must be positive"):
        RedisStoreConfig(url="redis://127.0.0.1:6379/0", socket_timeout_s=0)
    with pytest.raises(ValueError, match="max_cached_users must be at least 1"):
        RedisStoreConfig(url="redis://127.0.0.1:6379/0", max_cached_users=0)
