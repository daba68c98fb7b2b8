"""Leaf handler on a generated snapshot: flags, fallbacks, shard checks and NaN rejection."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fmlite import snapshot
from fmlite.sharding import shard_of
from leaf.profiles import load_profile_cache
from leaf.service import LeafConfig, LeafHandler
from rpc.idl import fmlite_thrift as T

META = ["category=a", "category=b", "format=ar", "has_image"]
DIM = 8


def make_snapshot(root, *, version=1, num_shards=2, poison_glance=None, poison_user=None, seed=0):
    rng = np.random.default_rng(seed)
    glance_ids = [f"N{i}" for i in range(50)]
    user_ids = [f"U{i}" for i in range(40)]

    def table(ids):
        return {
            "ids": np.array(ids),
            "meta": rng.random((len(ids), len(META))).astype(np.float32),
            "image": rng.normal(size=(len(ids), DIM)).astype(np.float32),
            "text": rng.normal(size=(len(ids), DIM)).astype(np.float32),
        }

    glances, users = table(glance_ids), table(user_ids)
    users["peeks"] = np.ones(len(user_ids))
    users["impressions"] = np.full(len(user_ids), 10.0)
    if poison_glance is not None:
        glances["text"][poison_glance, 0] = np.nan
    if poison_user is not None:
        users["meta"][poison_user, 1] = np.inf
    cold = {"meta": np.full(len(META), 0.1, np.float32), "image": np.zeros(DIM, np.float32), "text": np.zeros(DIM, np.float32)}
    snapshot.write_snapshot(root, version=version, num_shards=num_shards, meta_columns=META, glances=glances, users=users,
                            cold_start=cold, fallback_score=0.04)
    snapshot.publish_version(root, version)
    return user_ids, glance_ids


def make_leaf(root, shard=0, num_shards=2):
    handler = LeafHandler(LeafConfig(shard=shard, num_shards=num_shards, profiles=str(root)), registry=CollectorRegistry())
    handler.load()
    return handler


def user_in_shard(user_ids, shard, num_shards=2):
    return next(u for u in user_ids if shard_of(u, num_shards) == shard)


async def test_known_user_and_glances_scored(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    user = user_in_shard(users, 0)
    response = await leaf.predict(T.PredictRequest(user_id=user, glance_ids=glances[:10], variant="cosine"))
    assert len(response.scores) == 10
    assert all(0.0 <= s <= 1.0 for s in response.scores)
    assert response.flags == bytes(10)
    assert not response.cold_start_user
    assert response.profile_version == "1"


async def test_unknown_glance_gets_fallback_and_flag(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    user = user_in_shard(users, 0)
    ids = [glances[0], "never-seen", glances[1], "never-seen"]
    response = await leaf.predict(T.PredictRequest(user_id=user, glance_ids=ids, variant="cosine"))
    assert response.scores[1] == pytest.approx(0.04)
    assert response.scores[3] == pytest.approx(0.04)
    assert response.flags[1] == T.FLAG_UNKNOWN_GLANCE
    assert response.flags[0] == 0
    assert response.unknown_glances == 2


async def test_cold_start_user_flagged_every_position(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    newcomer = next(f"new-{i}" for i in range(100) if shard_of(f"new-{i}", 2) == 0)
    response = await leaf.predict(T.PredictRequest(user_id=newcomer, glance_ids=glances[:3], variant="cosine"))
    assert response.cold_start_user
    assert all(flag & T.FLAG_COLD_START_USER for flag in response.flags)


async def test_duplicates_scored_per_position(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    user = user_in_shard(users, 0)
    response = await leaf.predict(T.PredictRequest(user_id=user, glance_ids=[glances[2], glances[2], glances[3], glances[2]], variant="cosine"))
    assert response.scores[0] == response.scores[1] == response.scores[3]


async def test_wrong_shard_and_unknown_variant_rejected(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    with pytest.raises(T.InvalidRequest, match="this leaf serves shard 0"):
        await leaf.predict(T.PredictRequest(user_id=user_in_shard(users, 1), glance_ids=glances[:1], variant="cosine"))
    with pytest.raises(T.InvalidRequest, match="variant 'wide'"):
        await leaf.predict(T.PredictRequest(user_id=user_in_shard(users, 0), glance_ids=glances[:1], variant="wide"))


async def test_expired_deadline_not_scored(tmp_path):
    users, glances = make_snapshot(tmp_path)
    leaf = make_leaf(tmp_path)
    with pytest.raises(T.DeadlineExceeded):
        await leaf.predict(T.PredictRequest(user_id=user_in_shard(users, 0), glance_ids=glances[:1], variant="cosine", timeout_ms=0))


def test_nan_and_inf_rows_rejected_and_counted(tmp_path):
    users, glances = make_snapshot(tmp_path, poison_glance=3, poison_user=0)
    cache = load_profile_cache(tmp_path, shard=shard_of(users[0], 2), num_shards=2)
    assert cache.glances.rejected == 1
    assert glances[3] not in cache.glance_index
    assert users[0] not in cache.users.index
    assert cache.users.lookup(users[0]) is None
    assert cache.users.rejected == 1


def test_snapshot_shard_count_mismatch(tmp_path):
    make_snapshot(tmp_path, num_shards=2)
    with pytest.raises(snapshot.SnapshotError, match="partitioned into 2 shards"):
        load_profile_cache(tmp_path, shard=0, num_shards=4)


def test_corrupt_file_detected(tmp_path):
    make_snapshot(tmp_path)
    path = tmp_path / "1" / "glances.npz"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(snapshot.SnapshotError, match="SHA-256"):
        load_profile_cache(tmp_path, shard=0, num_shards=2)


def test_missing_snapshot(tmp_path):
    with pytest.raises(snapshot.SnapshotError, match="CURRENT"):
        load_profile_cache(tmp_path, shard=0, num_shards=2)
