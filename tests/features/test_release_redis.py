"""Release and rollback against the Redis profile store that a Helm installation's leaves read.

The artifact root stands for the chart's shared volume (models and file snapshots); the leaf
reads its profile version from the Redis pointer, as a leaf started with ``--redis-url`` does.
"""

from __future__ import annotations

import json

import pytest

from feature_setup import copy_as_version, copy_served_root, run_fmlite, start_leaf
from fmlite import snapshot
from fmlite.redis_server import RedisServer
from fmlite.release import PlatformTarget, ReleaseConfig, release
from fmlite.release_wait import leaf_statuses

PREFIX = "release-test:profiles"


@pytest.fixture(scope="module")
def redis_platform(trained_artifacts, tmp_path_factory):
    from model.publish import connect, publish_snapshot

    root = tmp_path_factory.mktemp("redis-root")
    model, profile = copy_served_root(trained_artifacts.out_dir, root)
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    client = connect(server.url)
    publish_snapshot(root / "profiles" / str(profile), client=client, prefix=PREFIX)
    leaf = None
    try:
        leaf = start_leaf(
            tmp_path_factory.mktemp("redis-leaf"),
            ["--shard", "0", "--num-shards", "2", "--profiles", str(root / "profiles"), "--model", f"fmlite={root / 'models' / 'fmlite'}",
             "--redis-url", server.url, "--redis-prefix", PREFIX, "--reload-interval-s", "1"],
        )
        yield root, model, profile, server, client, leaf
    finally:
        if leaf is not None:
            assert leaf.stop() == 0, leaf.log.read_text()[-2000:]
        client.close()
        server.stop()


def test_release_and_rollback_move_redis_pointer(redis_platform, sample_dir, tmp_path):
    from model.publish import current_store_version

    root, model, profile, server, client, leaf = redis_platform
    candidate = tmp_path / "candidate"
    copy_as_version(root, candidate, model + 1)
    platform = PlatformTarget(leaves=(leaf.address,), redis_url=server.url, redis_prefix=PREFIX, wait_timeout_s=120)
    lines: list[str] = []

    code = release(ReleaseConfig(root=root, data=sample_dir, candidate=candidate, tolerance=0.0, target=platform), out=lines.append)

    assert code == 0, "\n".join(lines)
    assert "1/1 leaves serve them" in "\n".join(lines)
    assert current_store_version(client, prefix=PREFIX) == model + 1
    assert snapshot.current_version(root / "profiles") == model + 1
    status = leaf_statuses([leaf.address])[0]
    assert (status.model_version, status.profile_version) == (str(model + 1), str(model + 1))
    gate = json.loads((root / "releases.json").read_text())["releases"][-1]["gate"]
    assert gate["difference"]["value"] == pytest.approx(0.0, abs=1e-12)

    rolled = run_fmlite("rollback", "--root", str(root), "--leaves", leaf.address, "--redis-url", server.url, "--redis-prefix", PREFIX, "--wait-timeout-s", "120")

    assert rolled.code == 0, rolled.output
    assert current_store_version(client, prefix=PREFIX) == profile
    status = leaf_statuses([leaf.address])[0]
    assert (status.model_version, status.profile_version) == (str(model), str(profile))
