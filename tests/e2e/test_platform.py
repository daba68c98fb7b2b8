"""The whole platform on loopback: real L0, L1 and leaf processes serving the trained SavedModel."""

import asyncio

import numpy as np
import pytest

from fmlite import snapshot
from fmlite.launcher import LocalPlatform
from fmlite.sharding import shard_of
from fmlite.signature import OUTPUT_NAME
from rpc.client import ThriftHttpClient
from rpc.idl import fmlite_thrift as T

NUM_SHARDS = 2


@pytest.fixture(scope="module")
def platform(trained_artifacts, tmp_path_factory):
    var = trained_artifacts.out_dir
    local = LocalPlatform(
        profiles=var / "profiles",
        models={"fmlite": var / "models" / "fmlite"},
        shards=NUM_SHARDS,
        leaves_per_shard=2,
        workdir=tmp_path_factory.mktemp("platform"),
        # Generous per-chunk timeouts: CI machines are shared and the suite runs beside TensorFlow.
        l1_args=["--chunk-timeout-ms", "3000"],
    )
    local.start(timeout_s=300)
    yield local
    codes = local.stop()
    assert all(code == 0 for code in codes.values()), f"a server did not exit cleanly after SIGTERM: {codes}"


@pytest.fixture(scope="module")
def profiles(trained_artifacts):
    root = trained_artifacts.out_dir / "profiles"
    directory = root / str(snapshot.current_version(root))
    manifest = snapshot.read_manifest(directory)
    glances = snapshot.load_glances(directory, manifest)
    users = {shard: snapshot.load_users(directory, shard, manifest) for shard in range(NUM_SHARDS)}
    return manifest, glances, users


@pytest.fixture(scope="module")
def saved_model(trained_artifacts):
    import tensorflow as tf

    base = trained_artifacts.out_dir / "models" / "fmlite"
    version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
    return str(version), tf.saved_model.load(str(base / str(version))).signatures["serving_default"]


def expected_scores(saved_model, profiles, user_id, glance_ids):
    import tensorflow as tf

    manifest, glances, users = profiles
    table = users[shard_of(user_id, NUM_SHARDS)]
    index = table.index()
    if user_id in index:
        row = index[user_id]
        user = {"meta": table.meta[row], "image": table.image[row], "text": table.text[row]}
    else:
        user = dict(manifest.cold_start)
    glance_index = glances.index()
    rows = np.array([glance_index[g] for g in glance_ids])
    count = len(rows)
    inputs = {
        f"user_{section}": tf.constant(np.tile(user[section], (count, 1)).astype(np.float32))
        for section in ("meta", "image", "text")
    }
    inputs.update({f"glance_{section}": tf.constant(getattr(glances, section)[rows]) for section in ("meta", "image", "text")})
    return np.asarray(saved_model[1](**inputs)[OUTPUT_NAME]).reshape(-1)


def call(address, request, timeout_s=10.0):
    async def run():
        client = ThriftHttpClient(address)
        try:
            return await client.predict(request, timeout_s=timeout_s)
        finally:
            await client.close()

    return asyncio.run(run())


def test_scores_equal_savedmodel_in_request_order(platform, profiles, saved_model):
    manifest, glances, users = profiles
    all_glances = [str(g) for g in glances.ids]
    rng = np.random.default_rng(11)
    checked = 0
    for shard in range(NUM_SHARDS):
        for user_id in [str(u) for u in users[shard].ids[:3]]:
            # 250 ids with repeats: three chunks of the default chunk size 100
            glance_ids = [all_glances[i] for i in rng.integers(0, len(all_glances), 250)]
            response = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000))
            assert response.shard == shard
            assert response.model_version == saved_model[0]
            assert response.profile_version == str(manifest.version)
            assert response.flags == bytes(len(glance_ids))
            expected = expected_scores(saved_model, profiles, user_id, glance_ids)
            np.testing.assert_allclose(response.scores, expected, rtol=0, atol=1e-6)
            checked += 1
    assert checked == 3 * NUM_SHARDS


def test_empty_glance_list_returns_empty(platform):
    response = call(platform.l0_address, T.PredictRequest(user_id="anyone", glance_ids=[]))
    assert response.scores == []
    assert response.flags == b""


def test_empty_user_id_is_typed_error(platform):
    with pytest.raises(T.InvalidRequest) as caught:
        call(platform.l0_address, T.PredictRequest(user_id="", glance_ids=["N1"]))
    assert caught.value.field == "user_id"


def test_unseen_user_is_cold_start(platform, profiles, saved_model):
    manifest, glances, _ = profiles
    glance_ids = [str(g) for g in glances.ids[:120]]
    for user_id in ("never-seen-user", "ユーザー-新しい", "Zoë"):
        response = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000))
        assert response.cold_start_user
        assert response.shard == shard_of(user_id, NUM_SHARDS)
        assert all(flag == T.FLAG_COLD_START_USER for flag in response.flags)
        np.testing.assert_allclose(response.scores, expected_scores(saved_model, profiles, user_id, glance_ids), atol=1e-6)


def test_unseen_glance_gets_fallback_flag(platform, profiles):
    manifest, glances, users = profiles
    user_id = str(users[0].ids[0])
    known = str(glances.ids[0])
    response = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=[known, "N-never-seen", known], timeout_ms=8000))
    assert response.flags[1] == T.FLAG_UNKNOWN_GLANCE
    assert response.flags[0] == 0
    assert response.scores[1] == pytest.approx(manifest.fallback_score)
    assert response.scores[0] == response.scores[2]
    assert response.unknown_glances == 1


def test_every_tier_agrees_on_shard(platform, profiles):
    manifest, glances, users = profiles
    user_id = str(users[1].ids[0])
    glance_ids = [str(g) for g in glances.ids[:5]]
    via_l0 = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000))
    via_l1 = call(platform.server("l1-1").address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, timeout_ms=8000, variant="fmlite"))
    via_leaf = call(platform.server("leaf-1-0").address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, variant="fmlite"))
    assert via_l0.scores == via_l1.scores == via_leaf.scores
    with pytest.raises(T.InvalidRequest, match="serves shard 0"):
        call(platform.server("l1-0").address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, variant="fmlite"))
    with pytest.raises(T.InvalidRequest, match="serves shard 0"):
        call(platform.server("leaf-0-0").address, T.PredictRequest(user_id=user_id, glance_ids=glance_ids, variant="fmlite"))


def test_cosine_variant_through_l0(platform, profiles):
    manifest, glances, users = profiles
    user_id = str(users[0].ids[0])
    response = call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=[str(g) for g in glances.ids[:450]], variant="cosine", timeout_ms=8000))
    assert response.variant == "cosine"
    assert len(response.scores) == 450
    with pytest.raises(T.InvalidRequest, match="unknown variant"):
        call(platform.l0_address, T.PredictRequest(user_id=user_id, glance_ids=["x"], variant="nope"))
