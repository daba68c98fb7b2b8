"""The local platform with leaves reading profiles from Redis: real L0, L1 and leaf processes."""

import asyncio
import json
import shutil
import time

import numpy as np
import pytest

from fmlite import snapshot
from fmlite.launcher import LocalPlatform, start_profile_store
from fmlite.sharding import shard_of
from model.publish import connect, current_store_version, publish_snapshot
from rpc.client import ThriftHttpClient
from rpc.idl import fmlite_thrift as T

NUM_SHARDS = 2


def call(address, request=None, *, health=False):
    async def run():
        client = ThriftHttpClient(address)
        try:
            if health:
                return await client.health(timeout_s=5.0)
            return await client.predict(request, timeout_s=10.0)
        finally:
            await client.close()

    return asyncio.run(run())


def copy_as_version(root, version, new_version):
    """Copy snapshot ``version`` to ``new_version`` (same data, new number) under ``root``."""
    target = root / str(new_version)
    shutil.copytree(root / str(version), target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = new_version
    manifest_path.write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def artifacts(trained_artifacts, tmp_path_factory):
    """Own copy of the trained profiles, so new versions written here stay out of the session's artifacts."""
    root = tmp_path_factory.mktemp("redis-platform") / "profiles"
    source = trained_artifacts.out_dir / "profiles"
    version = snapshot.current_version(source)
    root.mkdir()
    shutil.copytree(source / str(version), root / str(version))
    snapshot.publish_version(root, version)
    return root, version, trained_artifacts.out_dir / "models" / "fmlite"


def test_platform_serves_and_reloads_profiles_from_redis(artifacts, redis_server, tmp_path):
    root, version, models = artifacts
    prefix = "platform-test"
    client = connect(redis_server.url)
    publish_snapshot(root / str(version), client=client, prefix=prefix)
    platform = LocalPlatform(
        profiles=root,
        models={"fmlite": models},
        shards=NUM_SHARDS,
        leaves_per_shard=1,
        workdir=tmp_path / "platform",
        leaf_args=["--redis-url", redis_server.url, "--redis-prefix", prefix, "--max-cached-users", "200", "--reload-interval-s", "0.5"],
        l1_args=["--chunk-timeout-ms", "3000"],
    )
    platform.start(timeout_s=300)
    try:
        manifest = snapshot.read_manifest(root / str(version))
        users = snapshot.load_users(root / str(version), 1, manifest)
        glances = snapshot.load_glances(root / str(version), manifest)
        glance_ids = [str(g) for g in glances.ids[:150]]
        user_id = str(users.ids[-1])
        health = call(platform.server("leaf-1-0").address, health=True)
        assert health.details["profile_source"] == "redis"
        assert health.details["users"] == "200"
        assert health.details["users_complete"] == "false"

        response = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000))
        assert response.shard == shard_of(user_id, NUM_SHARDS) == 1
        assert response.profile_version == str(version)
        assert not response.cold_start_user
        assert response.flags == bytes(len(glance_ids))
        assert all(np.isfinite(response.scores))

        copy_as_version(root, version, version + 1)
        publish_snapshot(root / str(version + 1), client=client, prefix=prefix)
        assert current_store_version(client, prefix=prefix) == version + 1
        deadline = time.monotonic() + 60
        while True:
            after = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000))
            if after.profile_version == str(version + 1):
                break
            assert time.monotonic() < deadline, "the leaves did not switch to the new profile version"
            time.sleep(0.2)
        # Same data under a new number: same scores, and the user stayed in the cache.
        assert after.scores == response.scores
        assert not after.cold_start_user
    finally:
        codes = platform.stop()
        client.close()
    assert all(code == 0 for code in codes.values()), codes


def test_up_redis_publishes_profiles(artifacts, tmp_path):
    root, version, _ = artifacts
    var = tmp_path / "var"
    shutil.copytree(root, var / "profiles")
    server = start_profile_store(var)
    try:
        client = connect(server.url)
        assert current_store_version(client) == version
        client.close()
    finally:
        server.stop()
    assert server.process.poll() is not None
