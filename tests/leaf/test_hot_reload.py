"""Hot reload of model and profile versions: background load, warm-up, checks, atomic switch."""

import asyncio
import logging
import shutil
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fmlite import snapshot
from fmlite.sharding import shard_of
from leaf.savedmodel_runner import SavedModelRunner
from leaf.service import LeafConfig, LeafHandler
from leaf_models import copy_version
from rpc.idl import fmlite_thrift as T

SHARD = 0


@pytest.fixture
def workspace(real_model, tmp_path):
    """Own copies of the trained model (version 1) and of the published snapshot."""
    base = tmp_path / "models" / "fmlite"
    copy_version(real_model.path, base, 1)
    root = tmp_path / "profiles"
    root.mkdir()
    shutil.copytree(real_model.profiles_root / str(real_model.manifest.version), root / str(real_model.manifest.version))
    snapshot.publish_version(root, real_model.manifest.version)
    return base, root


def derive_snapshot(root, source_version, version, *, scale=1.0, drop_meta_column=False):
    """Write snapshot ``version`` from ``source_version`` with text embeddings scaled (or a meta column dropped) and publish it."""
    directory = root / str(source_version)
    manifest = snapshot.read_manifest(directory)
    glances = snapshot.load_glances(directory, manifest)
    tables = [snapshot.load_users(directory, shard, manifest) for shard in range(manifest.num_shards)]
    users = {key: np.concatenate([getattr(t, key) for t in tables]) for key in ("ids", "meta", "image", "text")}
    users["text"] = users["text"] * scale
    glance_arrays = {"ids": glances.ids, "meta": glances.meta, "image": glances.image, "text": glances.text * scale}
    columns = list(manifest.meta_columns)
    cold = dict(manifest.cold_start)
    if drop_meta_column:
        columns = columns[:-1]
        users["meta"] = users["meta"][:, :-1]
        glance_arrays["meta"] = glance_arrays["meta"][:, :-1]
        cold["meta"] = cold["meta"][:-1]
    snapshot.write_snapshot(
        root, version=version, num_shards=manifest.num_shards, meta_columns=columns, glances=glance_arrays, users=users,
        cold_start=cold, fallback_score=manifest.fallback_score,
    )
    snapshot.publish_version(root, version)


def make_leaf(base, root, *, interval=0.0, runner="numpy"):
    config = LeafConfig(shard=SHARD, num_shards=2, profiles=str(root), models={"fmlite": str(base)}, runner=runner, reload_interval_s=interval)
    handler = LeafHandler(config, registry=CollectorRegistry())
    handler.load()
    return handler


def request_for(handler, count=50):
    profiles = handler.state.profiles
    user_id = next(u for u in profiles.users.table.ids.tolist() if shard_of(u, 2) == SHARD)
    return T.PredictRequest(user_id=user_id, glance_ids=[str(g) for g in profiles.glances.ids[:count]], variant="fmlite")


def wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def reloads(handler, kind, outcome):
    return handler.metrics.reloads.labels(tier="leaf", kind=kind, outcome=outcome)._value.get()


async def test_new_model_version_loaded_in_background(workspace, random_model):
    base, root = workspace
    leaf = make_leaf(base, root, interval=0.1)
    try:
        request = request_for(leaf)
        before = await leaf.predict(request)
        assert before.model_version == "1"
        copy_version(random_model, base, 2)
        wait_for(lambda: leaf.state.runners["fmlite"].version == "2")
        after = await leaf.predict(request)
        assert after.model_version == "2"
        expected = SavedModelRunner("fmlite", base, version=2)
        profiles = leaf.state.profiles
        rows, _ = profiles.glance_rows(request.glance_ids)
        np.testing.assert_allclose(after.scores, expected.score(profiles.user(request.user_id), profiles, rows), atol=1e-5)
        assert after.scores != before.scores
        assert leaf.metrics.model_version_number.labels(tier="leaf", variant="fmlite")._value.get() == 2
        assert reloads(leaf, "model", "switched") == 1
        health = await leaf.health()
        assert health.model_version == "2"
    finally:
        await leaf.close()


async def test_corrupt_version_rejected_old_keeps_serving(workspace, caplog):
    base, root = workspace
    leaf = make_leaf(base, root)
    broken = copy_version(base / "1", base, 2)
    for data in (broken / "variables").glob("variables.data-*"):
        data.write_bytes(data.read_bytes()[:100])
    with caplog.at_level(logging.ERROR, logger="leaf.reload"):
        assert leaf.reloader.poll_once(leaf.state) is None
    assert any("model fmlite version 2 rejected" in record.getMessage() for record in caplog.records)
    assert reloads(leaf, "model", "rejected") == 1
    # A rejected version is not loaded again on the next poll.
    assert leaf.reloader.poll_once(leaf.state) is None
    assert reloads(leaf, "model", "rejected") == 1
    response = await leaf.predict(request_for(leaf))
    assert response.model_version == "1"
    await leaf.close()


async def test_version_failing_warmup_check_rejected(workspace, random_model, real_model):
    base, root = workspace
    leaf = make_leaf(base, root)
    impostor = copy_version(random_model, base, 2)
    shutil.copyfile(real_model.path / "assets.extra" / "tf_serving_warmup_requests", impostor / "assets.extra" / "tf_serving_warmup_requests")
    assert leaf.reloader.poll_once(leaf.state) is None
    assert reloads(leaf, "model", "rejected") == 1
    assert (await leaf.predict(request_for(leaf))).model_version == "1"
    await leaf.close()


async def test_foreign_signature_rejected(workspace, tmp_path):
    import tensorflow as tf

    base, root = workspace
    leaf = make_leaf(base, root, runner="savedmodel")

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
        def serve(self, features):
            return {"score": tf.reduce_sum(features, axis=1)}

    module = Other()
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.serve})
    copy_version(tmp_path / "other", base, 2)
    assert leaf.reloader.poll_once(leaf.state) is None
    assert reloads(leaf, "model", "rejected") == 1
    assert (await leaf.predict(request_for(leaf))).model_version == "1"
    await leaf.close()


async def test_new_profile_version_switched_incompatible_rejected(workspace, real_model):
    base, root = workspace
    leaf = make_leaf(base, root)
    old_version = real_model.manifest.version
    request = request_for(leaf)
    before = await leaf.predict(request)

    derive_snapshot(root, old_version, old_version + 1, drop_meta_column=True)
    assert leaf.reloader.poll_once(leaf.state) is None
    assert reloads(leaf, "profiles", "rejected") == 1
    assert (await leaf.predict(request)).profile_version == str(old_version)

    derive_snapshot(root, old_version, old_version + 2, scale=0.5)
    state = leaf.reloader.poll_once(leaf.state)
    assert state is not None
    leaf.install(state)
    after = await leaf.predict(request)
    assert after.profile_version == str(old_version + 2)
    assert after.model_version == "1"
    assert after.scores != before.scores
    assert leaf.metrics.profile_version_number._value.get() == old_version + 2
    await leaf.close()


async def test_requests_never_mix_versions_during_switches(workspace, random_model, real_model):
    """Requests run while the reload thread switches model and profiles; each response matches one installed state."""
    base, root = workspace
    leaf = make_leaf(base, root, interval=0.05)
    installed = {}
    original_install = leaf.install

    def recording_install(state):
        installed[(state.runners["fmlite"].version, state.profile_version)] = state
        original_install(state)

    leaf.install = recording_install
    leaf.reloader._install = recording_install
    first = leaf.state
    installed[(first.runners["fmlite"].version, first.profile_version)] = first
    request = request_for(leaf, count=100)
    responses = []
    try:
        copy_version(random_model, base, 2)
        derive_snapshot(root, real_model.manifest.version, real_model.manifest.version + 1, scale=0.25)
        # One poll may pick up the new model and the new profiles together, so the final state can
        # follow the first one directly. The loop waits for a response from it, not for a state count.
        final = ("2", str(real_model.manifest.version + 1))
        deadline = time.monotonic() + 90
        served_final = False
        while not served_final or len(responses) < 50:
            assert time.monotonic() < deadline, f"only saw states {sorted(installed)}, waiting for {final}"
            response = await leaf.predict(request)
            responses.append(response)
            served_final = (response.model_version, response.profile_version) == final
            await asyncio.sleep(0.005)
    finally:
        await leaf.close()
    pairs = {(r.model_version, r.profile_version) for r in responses}
    assert pairs <= set(installed)
    assert len(pairs) >= 2
    for response in responses:
        state = installed[(response.model_version, response.profile_version)]
        profiles = state.profiles
        rows, _ = profiles.glance_rows(request.glance_ids)
        expected = state.runners["fmlite"].score(profiles.user(request.user_id), profiles, rows)
        np.testing.assert_array_equal(np.asarray(response.scores, np.float32), expected)


def test_start_falls_back_to_older_good_version(workspace, random_model):
    base, root = workspace
    broken = copy_version(random_model, base, 2)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    leaf = make_leaf(base, root)
    assert leaf.state.runners["fmlite"].version == "1"
    assert reloads(leaf, "model", "rejected") == 1
