"""Publishing file snapshots to a real Redis: versions, the atomic pointer and clean-up."""

import threading

import numpy as np
import pytest

from fmlite import snapshot
from fmlite.redis_layout import KeyLayout, RowCodec
from fmlite.sharding import shard_of
from leaf.store import RedisProfileSource, RedisStoreConfig
from model.publish import (
    PublishError,
    VersionExistsError,
    activate_version,
    current_store_version,
    publish_snapshot,
    stored_versions,
)
from store_fixtures import META, make_snapshot


def source(url, prefix, shard=0, num_shards=2, **options):
    return RedisProfileSource(RedisStoreConfig(url=url, prefix=prefix, **options), shard=shard, num_shards=num_shards)


def test_round_trip_matches_file_snapshot(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, glance_ids = make_snapshot(tmp_path, users=80)
    result = publish_snapshot(directory, client=redis_client, prefix=prefix)
    assert result.version == 1
    assert result.activated
    assert result.users == 80
    assert result.glances == 40
    manifest = snapshot.read_manifest(directory)
    for shard in range(2):
        profiles = source(redis_server.url, prefix, shard=shard).load(1)
        expected = snapshot.load_users(directory, shard, manifest)
        assert profiles.users.complete
        assert len(profiles.users) == len(expected)
        for row, user_id in enumerate(expected.ids.tolist()):
            vectors = profiles.users.lookup(user_id)
            np.testing.assert_array_equal(vectors.meta, expected.meta[row])
            np.testing.assert_array_equal(vectors.image, expected.image[row])
            np.testing.assert_array_equal(vectors.text, expected.text[row])
        glances = snapshot.load_glances(directory, manifest)
        np.testing.assert_array_equal(profiles.glances.ids, glances.ids)
        np.testing.assert_array_equal(profiles.glances.text, glances.text)
        assert profiles.manifest.meta_columns == tuple(META)
        assert profiles.fallback_score == pytest.approx(0.04)
        np.testing.assert_array_equal(profiles.cold_start.meta, manifest.cold_start["meta"])


def test_users_partitioned_by_router_hash(tmp_path, redis_client, prefix):
    directory, user_ids, _ = make_snapshot(tmp_path, users=100, num_shards=3)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    layout = KeyLayout(prefix)
    seen = set()
    for shard in range(3):
        stored = {field.decode() for field in redis_client.hkeys(layout.users(1, shard))}
        assert all(shard_of(user_id, 3) == shard for user_id in stored)
        seen |= stored
    assert seen == set(user_ids)


def test_row_bytes_follow_layout(tmp_path, redis_client, prefix):
    directory, user_ids, _ = make_snapshot(tmp_path)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    user_id = user_ids[0]
    value = redis_client.hget(KeyLayout(prefix).users(1, shard_of(user_id, 2)), user_id)
    codec = RowCodec(len(META), 8)
    assert len(value) == 4 * (len(META) + 16)
    meta, image, text = codec.split(codec.decode_rows([value]))
    table = snapshot.load_users(directory, shard_of(user_id, 2))
    row = table.index()[user_id]
    np.testing.assert_array_equal(meta[0], table.meta[row])
    np.testing.assert_array_equal(text[0], table.text[row])


def test_pointer_moves_only_when_activated(tmp_path, redis_client, prefix):
    first, _, _ = make_snapshot(tmp_path, version=1)
    second, _, _ = make_snapshot(tmp_path, version=2)
    publish_snapshot(first, client=redis_client, prefix=prefix)
    stored = publish_snapshot(second, client=redis_client, prefix=prefix, activate=False)
    assert not stored.activated
    assert current_store_version(redis_client, prefix=prefix) == 1
    assert stored_versions(redis_client, prefix=prefix) == [1, 2]
    assert activate_version(redis_client, 2, prefix=prefix) == 1
    assert current_store_version(redis_client, prefix=prefix) == 2
    # Rolling back is activating an older complete version.
    assert activate_version(redis_client, 1, prefix=prefix) == 2
    assert current_store_version(redis_client, prefix=prefix) == 1


def test_existing_version_rejected(tmp_path, redis_client, prefix):
    directory, _, _ = make_snapshot(tmp_path)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    with pytest.raises(VersionExistsError, match="version 1 is already complete"):
        publish_snapshot(directory, client=redis_client, prefix=prefix)


def test_incomplete_version_cannot_be_activated(tmp_path, redis_client, prefix):
    directory, _, _ = make_snapshot(tmp_path)
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    # A crashed publish of version 7 left a users hash but no manifest.
    redis_client.hset(KeyLayout(prefix).users(7, 0), "U1", b"x")
    with pytest.raises(PublishError, match="version 7 is not complete"):
        activate_version(redis_client, 7, prefix=prefix)
    assert current_store_version(redis_client, prefix=prefix) == 1


def test_partial_keys_of_crashed_publish_replaced(tmp_path, redis_client, prefix):
    directory, user_ids, _ = make_snapshot(tmp_path)
    layout = KeyLayout(prefix)
    redis_client.hset(layout.users(1, 0), "stale-user", b"garbage")
    publish_snapshot(directory, client=redis_client, prefix=prefix)
    assert redis_client.hget(layout.users(1, 0), "stale-user") is None


def test_old_versions_deleted_after_switch(tmp_path, redis_client, prefix):
    for version in range(1, 5):
        directory, _, _ = make_snapshot(tmp_path, version=version)
        result = publish_snapshot(directory, client=redis_client, prefix=prefix, keep_versions=2)
    assert result.deleted_versions == (2,)
    assert stored_versions(redis_client, prefix=prefix) == [3, 4]
    assert list(redis_client.scan_iter(match=f"{prefix}:v1:*")) == []
    assert list(redis_client.scan_iter(match=f"{prefix}:v2:*")) == []
    assert redis_client.exists(KeyLayout(prefix).manifest(3))


def test_keep_versions_must_be_positive(tmp_path, redis_client, prefix):
    directory, _, _ = make_snapshot(tmp_path)
    with pytest.raises(PublishError, match="keep_versions must be at least 1"):
        publish_snapshot(directory, client=redis_client, prefix=prefix, keep_versions=0)


def test_nan_rows_not_published_and_counted(tmp_path, redis_server, redis_client, prefix):
    directory, user_ids, _ = make_snapshot(tmp_path, poison_user=3)
    result = publish_snapshot(directory, client=redis_client, prefix=prefix)
    assert result.rejected_rows == 1
    assert result.users == len(user_ids) - 1
    shard = shard_of(user_ids[3], 2)
    assert redis_client.hget(KeyLayout(prefix).users(1, shard), user_ids[3]) is None


def test_reader_sees_whole_versions_during_publishes(tmp_path, redis_server, redis_client, prefix):
    """A reader polling while three versions are published loads each version whole, never a mix."""
    directories = [make_snapshot(tmp_path, version=version, fill=float(version), users=300)[0] for version in (1, 2, 3, 4)]
    publish_snapshot(directories[0], client=redis_client, prefix=prefix, keep_versions=10)
    reader = source(redis_server.url, prefix, socket_timeout_s=5.0)
    loads: list[tuple[int, set[float]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                version = reader.published_version()
                profiles = reader.load(version)
                values = set(np.unique(profiles.glances.meta).tolist())
                for user_id in profiles.users.cache.ids_by_recency():
                    values |= set(np.unique(profiles.users.lookup(user_id).text).tolist())
                loads.append((version, values))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    for directory in directories[1:]:
        publish_snapshot(directory, client=redis_client, prefix=prefix, keep_versions=10)
    done.set()
    thread.join(timeout=30)
    assert errors == []
    assert len(loads) >= 2
    for version, values in loads:
        assert values == {float(version)}
    assert current_store_version(redis_client, prefix=prefix) == 4


def test_cli_publishes_current_snapshot(tmp_path, redis_server, redis_client, prefix, capsys):
    from fmlite.cli import main

    make_snapshot(tmp_path, version=5)
    assert main(["publish-profiles", "--redis-url", redis_server.url, "--prefix", prefix, "--profiles", str(tmp_path)]) == 0
    assert "profile version 5 published" in capsys.readouterr().out
    assert current_store_version(redis_client, prefix=prefix) == 5
    assert main(["publish-profiles", "--redis-url", redis_server.url, "--prefix", prefix, "--profiles", str(tmp_path)]) == 1
    assert "already complete" in capsys.readouterr().err
    assert main(["publish-profiles", "--redis-url", redis_server.url, "--prefix", prefix, "--activate", "99"]) == 1
