"""One local platform for the feature tests: an artifact root copied from the session's pipeline run,
glance statistics beside its snapshot, and an L0 that reads a traffic config the tests rewrite.
"""

from __future__ import annotations

import json

import pytest

from feature_setup import BLEND_TRAFFIC, SHARDS, FeaturePlatform, copy_served_root, write_sample_stats
from fmlite import snapshot
from fmlite.launcher import LocalPlatform


@pytest.fixture(scope="session")
def feature_platform(trained_artifacts, mind_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("feature-root")
    model, profile = copy_served_root(trained_artifacts.out_dir, root)
    write_sample_stats(root / "profiles" / str(profile), mind_data, version=f"sample-{profile}")
    traffic = root / "traffic.json"
    traffic.write_text(json.dumps(BLEND_TRAFFIC))
    local = LocalPlatform(
        profiles=root / "profiles",
        models={"fmlite": root / "models" / "fmlite"},
        shards=SHARDS,
        leaves_per_shard=1,
        traffic=traffic,
        workdir=root / "run",
        leaf_args=["--reload-interval-s", "1"],
        l1_args=["--chunk-timeout-ms", "3000"],
    )
    local.start(timeout_s=300)
    yield FeaturePlatform(platform=local, root=root, traffic=traffic, model_version=model, profile_version=profile)
    codes = local.stop()
    assert all(code == 0 for code in codes.values()), f"a server did not exit cleanly: {codes}"


@pytest.fixture(scope="session")
def served_snapshot(feature_platform):
    directory = feature_platform.root / "profiles" / str(feature_platform.profile_version)
    manifest = snapshot.read_manifest(directory)
    glances = snapshot.load_glances(directory, manifest)
    users = {shard: snapshot.load_users(directory, shard, manifest) for shard in range(SHARDS)}
    return manifest, glances, users
