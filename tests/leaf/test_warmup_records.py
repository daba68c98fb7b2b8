"""Warm-up records written at export, in TensorFlow Serving's PredictionLog format, and their replay."""

import numpy as np
import pytest

from fmlite.signature import INPUT_NAMES, SIGNATURE_NAME
from fmlite.warmup_records import WARMUP_FILE, WarmupRecord, WarmupRecordError, read_warmup_records, write_warmup_records
from leaf.checks import CheckError, replay_warmup
from leaf.numpy_runner import NumPyRunner
from leaf.savedmodel_runner import SavedModelRunner
from leaf_models import copy_version
from model.export import WARMUP_BATCH_SIZES


def test_export_writes_prediction_logs(real_model):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = real_model.path / WARMUP_FILE
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(path))]
    assert [log.predict_log.request.inputs["user_meta"].tensor_shape.dim[0].size for log in logs] == list(WARMUP_BATCH_SIZES)
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "fmlite"
        assert request.model_spec.signature_name == SIGNATURE_NAME
        assert set(request.inputs) == set(INPUT_NAMES)
        assert "score" in log.predict_log.response.outputs


def test_recorded_scores_are_the_savedmodel_scores(real_model):
    runner = SavedModelRunner("fmlite", real_model.base, version=real_model.version)
    records = read_warmup_records(real_model.path)
    assert [record.rows for record in records] == list(WARMUP_BATCH_SIZES)
    for record in records:
        np.testing.assert_allclose(runner.predict_arrays(record.inputs), record.expected, atol=1e-5)
    assert replay_warmup(runner, real_model.path, tolerance=1e-5) == len(WARMUP_BATCH_SIZES)
    assert replay_warmup(NumPyRunner("fmlite", real_model.base, version=real_model.version), real_model.path, tolerance=1e-5) == 3


def test_replay_rejects_other_weights(real_model, random_model, tmp_path):
    import shutil

    # The random model with the trained model's recorded requests and scores.
    version = copy_version(random_model, tmp_path, 1)
    shutil.copyfile(real_model.path / WARMUP_FILE, version / WARMUP_FILE)
    runner = SavedModelRunner("fmlite", tmp_path, version=1)
    with pytest.raises(CheckError, match="differ from the recorded scores"):
        replay_warmup(runner, version, tolerance=1e-5)


def test_missing_file_means_no_records(tmp_path):
    assert read_warmup_records(tmp_path) == []


def test_corrupt_file_rejected(tmp_path):
    path = tmp_path / WARMUP_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(WarmupRecordError, match="not a readable file"):
        read_warmup_records(tmp_path)


def test_writer_checks_records(tmp_path):
    with pytest.raises(WarmupRecordError, match="at least one"):
        write_warmup_records(tmp_path, [], model_name="fmlite")
    partial = WarmupRecord(inputs={"user_meta": np.zeros((1, 3), np.float32)})
    with pytest.raises(WarmupRecordError, match="lacks the signature inputs"):
        write_warmup_records(tmp_path, [partial], model_name="fmlite")
