"""Warm-up requests stored beside a SavedModel, in the format TensorFlow Serving replays at load.

The file ``<version>/assets.extra/tf_serving_warmup_requests`` is a TFRecord file of serialized
``tensorflow.serving.PredictionLog`` messages, each holding one ``PredictRequest`` (the
``serving_default`` inputs of one batch). TensorFlow Serving runs them before it marks the
version available. The export also stores the scores it expects in each ``PredictLog.response``;
TensorFlow Serving ignores that field, and the leaves use it to check a new version before
switching to it.

TensorFlow and ``tensorflow-serving-api`` are imported inside the functions, so importing this
module stays cheap for tiers that never read a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME

__all__ = [
    "WARMUP_FILE",
    "MAX_WARMUP_RECORDS",
    "WarmupRecordError",
    "WarmupRecord",
    "write_warmup_records",
    "read_warmup_records",
]

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# TensorFlow Serving reads at most this many records from the file.
MAX_WARMUP_RECORDS = 1000


class WarmupRecordError(ValueError):
    """The warm-up file is unreadable or a record lacks a signature input."""


def _prediction_log_module() -> object:
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            "tensorflow-serving-api is not installed; install it beside tensorflow-cpu with "
            "`pip install --no-deps tensorflow-serving-api==2.21.0` (it declares the full tensorflow package)"
        ) from error
    return prediction_log_pb2


@dataclass(frozen=True)
class WarmupRecord:
    """One recorded request: the six signature inputs and, when recorded, the expected scores."""

    inputs: Mapping[str, np.ndarray]
    expected: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(np.asarray(self.inputs[INPUT_NAMES[0]]).shape[0])


def write_warmup_records(
    model_dir: str | os.PathLike[str],
    records: Sequence[WarmupRecord],
    *,
    model_name: str,
    signature_name: str = SIGNATURE_NAME,
) -> Path:
    """Write ``records`` to ``<model_dir>/assets.extra/tf_serving_warmup_requests`` and return its path."""
    import tensorflow as tf

    prediction_log_pb2 = _prediction_log_module()
    from tensorflow_serving.apis import predict_pb2

    if not records:
        raise WarmupRecordError("at least one warm-up record is required")
    if len(records) > MAX_WARMUP_RECORDS:
        raise WarmupRecordError(f"{len(records)} warm-up records exceed TensorFlow Serving's maximum of {MAX_WARMUP_RECORDS}")
    path = Path(model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            missing = [name for name in INPUT_NAMES if name not in record.inputs]
            if missing:
                raise WarmupRecordError(f"warm-up record lacks the signature inputs {missing}")
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for name in INPUT_NAMES:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(record.inputs[name], np.float32)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            if record.expected is not None:
                log.predict_log.response.outputs[OUTPUT_NAME].CopyFrom(
                    tf.make_tensor_proto(np.asarray(record.expected, np.float32).reshape(-1))
                )
            writer.write(log.SerializeToString())
    return path


def read_warmup_records(model_dir: str | os.PathLike[str]) -> list[WarmupRecord]:
    """Return the warm-up records of the SavedModel in ``model_dir``; an empty list when it has none."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    path = Path(model_dir) / WARMUP_FILE
    if not path.exists():
        return []
    prediction_log_pb2 = _prediction_log_module()
    records: list[WarmupRecord] = []
    try:
        for serialized in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(serialized.numpy())
            request = log.predict_log.request
            missing = [name for name in INPUT_NAMES if name not in request.inputs]
            if missing:
                raise WarmupRecordError(f"{path}: record {len(records)} lacks the signature inputs {missing}")
            inputs = {name: tf.make_ndarray(request.inputs[name]).astype(np.float32) for name in INPUT_NAMES}
            outputs = log.predict_log.response.outputs
            expected = tf.make_ndarray(outputs[OUTPUT_NAME]).astype(np.float32).reshape(-1) if OUTPUT_NAME in outputs else None
            records.append(WarmupRecord(inputs=inputs, expected=expected))
    except (tf.errors.OpError, DecodeError) as error:
        raise WarmupRecordError(f"{path} is not a readable file of PredictionLog records: {error}") from error
    return records
