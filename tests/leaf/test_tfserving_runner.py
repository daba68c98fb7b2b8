"""The TF Serving runner over gRPC, against the local PredictionService serving the same SavedModel."""

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fmlite.signature import INPUT_NAMES
from leaf.local_prediction_service import LocalPredictionService
from leaf.model_files import ModelLoadError
from leaf.profiles import load_profile_cache
from leaf.runners import RunnerOptions
from leaf.savedmodel_runner import SavedModelRunner
from leaf.service import LeafConfig, LeafHandler
from leaf.tensor_protos import float_tensor_proto
from leaf.tfserving_runner import ModelVersionUnavailable, TFServingRunner, rows_per_message
from leaf_models import check_inputs, copy_version
from rpc.idl import fmlite_thrift as T

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def model_base(real_model, tmp_path_factory):
    """A base directory of its own holding a copy of the trained version as version 1."""
    base = tmp_path_factory.mktemp("tfs-models")
    copy_version(real_model.path, base, 1)
    return base


@pytest.fixture(scope="module")
def service(model_base):
    local = LocalPredictionService(model_name="fmlite", base_path=model_base, poll_interval_s=0.2)
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def profiles(real_model):
    return load_profile_cache(real_model.profiles_root, shard=0, num_shards=2)


def test_scores_equal_in_process_savedmodel(service, model_base, profiles):
    runner = TFServingRunner("fmlite", model_base, address=service.address, model_name="fmlite", wait_s=10)
    local = SavedModelRunner("fmlite", model_base, version=1)
    assert runner.version == "1"
    rng = np.random.default_rng(1)
    for user_id in profiles.users.table.ids[:5].tolist():
        user = profiles.users.lookup(user_id)
        rows = rng.integers(0, len(profiles.glances), 100)
        np.testing.assert_allclose(runner.score(user, profiles, rows), local.score(user, profiles, rows), rtol=0, atol=1e-6)
    runner.close()


def test_large_chunk_split_under_message_limit(service, model_base, profiles):
    runner = TFServingRunner("fmlite", model_base, address=service.address, model_name="fmlite", max_message_bytes=1 * MIB, wait_s=10)
    row_bytes = 4 * sum(runner.input_widths.values())
    assert runner.rows_per_call * row_bytes < 1 * MIB
    rows = np.arange(1000) % len(profiles.glances)
    calls = service.predict_calls
    scores = runner.score(profiles.cold_start, profiles, rows)
    assert service.predict_calls - calls == -(-1000 // runner.rows_per_call)
    expected = SavedModelRunner("fmlite", model_base, version=1).score(profiles.cold_start, profiles, rows)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # The FM-Lite chunk of 100 pairs is one call under gRPC's default 4 MiB.
    assert rows_per_message(runner.input_widths, 4 * MIB) >= 400


def test_server_rejects_message_over_its_limit(service, model_base, profiles):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    options = [("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(service.address, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "fmlite"
        rows = 1500
        for name in INPUT_NAMES:
            width = 145 if name.endswith("meta") else 384
            request.inputs[name].CopyFrom(float_tensor_proto(np.zeros((rows, width), np.float32)))
        assert request.ByteSize() > 4 * MIB
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_requests_get_tf_serving_status_codes(service, real_model):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    inputs = check_inputs(real_model.manifest, real_model.profiles_root, rows=3)
    with grpc.insecure_channel(service.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(model_name="fmlite", drop=None, version=None, wrong_width=False):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            if version is not None:
                request.model_spec.version.value = version
            for name in INPUT_NAMES:
                if name == drop:
                    continue
                value = inputs[name][:, :5] if wrong_width and name == "glance_text" else inputs[name]
                request.inputs[name].CopyFrom(float_tensor_proto(value))
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=10)
            return caught.value.code(), caught.value.details()

        assert call(model_name="other")[0] == grpc.StatusCode.NOT_FOUND
        assert call(version=99)[0] == grpc.StatusCode.NOT_FOUND
        code, details = call(drop="user_text")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_text" in details
        code, details = call(wrong_width=True)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "glance_text" in details


def test_unknown_model_name_fails_at_load(service, model_base):
    with pytest.raises(ModelLoadError, match="did not report other version 1 AVAILABLE"):
        TFServingRunner("fmlite", model_base, address=service.address, model_name="other", wait_s=0.5)


def test_unloaded_version_becomes_unavailable(real_model, tmp_path, profiles):
    base = tmp_path / "models"
    copy_version(real_model.path, base, 1)
    local = LocalPredictionService(model_name="fmlite", base_path=base, poll_interval_s=0.1, num_versions=1)
    local.start()
    try:
        config = LeafConfig(
            shard=0, num_shards=2, profiles=str(real_model.profiles_root), models={"fmlite": str(base)}, runner="tfserving",
            runner_options=RunnerOptions(tfserving_address=local.address, tfserving_wait_s=10), reload_interval_s=0,
        )
        leaf = LeafHandler(config, registry=CollectorRegistry())
        leaf.load()
        runner = leaf.state.runners["fmlite"]
        assert runner.kind == "tfserving"
        user_id = profiles.users.table.ids[0]
        glances = [str(g) for g in profiles.glances.ids[:10]]

        copy_version(real_model.path, base, 2)
        local.poll_once()  # TF Serving's default policy: version 2 loads, version 1 is unloaded
        with pytest.raises(ModelVersionUnavailable):
            runner.score(profiles.cold_start, profiles, np.arange(3))
        import asyncio

        with pytest.raises(T.Unavailable, match="model server failed"):
            asyncio.run(leaf.predict(T.PredictRequest(user_id=str(user_id), glance_ids=glances)))
        # The reloader switches to the version TF Serving now serves.
        state = leaf.reloader.poll_once(leaf.state)
        leaf.install(state)
        response = asyncio.run(leaf.predict(T.PredictRequest(user_id=str(user_id), glance_ids=glances)))
        assert response.model_version == "2"
    finally:
        local.stop()


def test_two_versions_kept_serve_both(real_model, tmp_path, profiles):
    base = tmp_path / "models"
    copy_version(real_model.path, base, 1)
    local = LocalPredictionService(model_name="fmlite", base_path=base, poll_interval_s=0.1, num_versions=2)
    local.start()
    try:
        first = TFServingRunner("fmlite", base, address=local.address, model_name="fmlite", wait_s=10)
        copy_version(real_model.path, base, 2)
        local.poll_once()
        second = TFServingRunner("fmlite", base, address=local.address, model_name="fmlite", wait_s=10)
        rows = np.arange(5)
        assert (first.version, second.version) == ("1", "2")
        np.testing.assert_allclose(first.score(profiles.cold_start, profiles, rows), second.score(profiles.cold_start, profiles, rows))
    finally:
        local.stop()
