"""Export of a trained FM-Lite model as a TensorFlow SavedModel in TF Serving's layout.

``<models_root>/fmlite/<version>/`` contains ``saved_model.pb`` and ``variables/`` with the
``serving_default`` signature of ``fmlite.signature``: six float32 inputs ``[B, width]`` and the
output ``score`` of shape ``[B]``. ``assets.extra/fmlite_model.json`` records the input widths,
the meta columns and the layer layout. ``assets.extra/tf_serving_warmup_requests`` holds warm-up
requests of ``WARMUP_BATCH_SIZES`` rows built from the check rows, with the expected scores
(``fmlite.warmup_records``): TensorFlow Serving replays them before serving a version, and the
leaves replay and compare them before switching to it. The export is written to a hidden staging directory,
reloaded with ``tf.saved_model.load`` and compared with the Keras model, and only renamed to
its version number when the scores agree, so TF Serving never sees a partial or wrong version.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME
from fmlite.warmup_records import WarmupRecord, write_warmup_records
from model.fmlite_model import SECTIONS, SIDES

__all__ = [
    "MODEL_NAME",
    "SCORE_TOLERANCE",
    "METADATA_FILE",
    "WARMUP_BATCH_SIZES",
    "ExportError",
    "export_savedmodel",
    "reload_scores",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "fmlite"
# Maximum absolute difference between the reloaded SavedModel's and the Keras model's scores.
SCORE_TOLERANCE = 1e-5
METADATA_FILE = "assets.extra/fmlite_model.json"
# Rows per warm-up request: one user, the FM-Lite leaf chunk (100) and the baseline chunk (400).
WARMUP_BATCH_SIZES = (1, 100, 400)


class ExportError(RuntimeError):
    """The export target exists, or the reloaded SavedModel does not reproduce the Keras scores."""


def _input_signature(model: keras.Model) -> list[tf.TensorSpec]:
    widths = {tensor.name.split(":")[0]: int(tensor.shape[-1]) for tensor in model.inputs}
    missing = [name for name in INPUT_NAMES if name not in widths]
    if missing:
        raise ExportError(f"model inputs {sorted(widths)} lack the signature inputs {missing}")
    return [tf.TensorSpec([None, widths[name]], tf.float32, name=name) for name in INPUT_NAMES]


def reload_scores(directory: str | Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Load the SavedModel in ``directory`` and return its ``score`` output for ``inputs``."""
    loaded = tf.saved_model.load(str(directory))
    serve = loaded.signatures[SIGNATURE_NAME]
    tensors = {name: tf.constant(np.asarray(inputs[name], np.float32)) for name in INPUT_NAMES}
    return serve(**tensors)[OUTPUT_NAME].numpy()


def export_savedmodel(
    model: keras.Model,
    *,
    models_root: str | Path,
    version: int,
    check_inputs: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` as version ``version`` under ``<models_root>/fmlite/`` and return its directory.

    The Keras model and the reloaded SavedModel both score ``check_inputs`` (the six inputs, at
    least one row). A difference above ``SCORE_TOLERANCE`` raises ``ExportError``.
    """
    if version < 1:
        raise ExportError(f"model version must be a positive integer, got {version}")
    rows = {len(np.asarray(check_inputs[name])) for name in INPUT_NAMES}
    if len(rows) != 1 or 0 in rows:
        raise ExportError(f"check_inputs must hold the same positive number of rows for every input, got {sorted(rows)}")
    base = Path(models_root) / MODEL_NAME
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(version)
    if target.exists():
        raise ExportError(f"model version {version} already exists at {target}")

    signature = _input_signature(model)

    def serve(user_meta: tf.Tensor, user_image: tf.Tensor, user_text: tf.Tensor, glance_meta: tf.Tensor, glance_image: tf.Tensor, glance_text: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = {
            "user_meta": user_meta,
            "user_image": user_image,
            "user_text": user_text,
            "glance_meta": glance_meta,
            "glance_image": glance_image,
            "glance_text": glance_text,
        }
        return {OUTPUT_NAME: tf.reshape(model(inputs, training=False), [-1])}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE_NAME, fn=serve, input_signature=signature)

    # TF Serving's version scan ignores a directory whose name is not an integer. mkdir (not
    # mkdtemp, which makes it 0700) applies the umask, so a server running as another user can read it.
    staging = base / f".{version}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        archive.write_out(str(staging), verbose=False)
        layout = {
            "signature": SIGNATURE_NAME,
            "inputs": {spec.name: list(spec.shape.as_list()) for spec in signature},
            "output": {OUTPUT_NAME: [None]},
            "towers": {
                f"{side}_{section}": [layer.name for layer in model.layers if layer.name.startswith(f"{side}_{section}_dense_")]
                for side in SIDES
                for section in SECTIONS
            },
            "final_layer": "score",
            "final_input_order": ["s_image", "s_text", "a_user_meta", "a_glance_meta", "meta_cross"],
            **dict(metadata or {}),
        }
        extra = staging / METADATA_FILE
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(json.dumps(layout, indent=1, sort_keys=True))

        expected = np.asarray(model.predict({name: np.asarray(check_inputs[name], np.float32) for name in INPUT_NAMES}, verbose=0)).reshape(-1)
        reloaded = reload_scores(staging, check_inputs)
        difference = float(np.max(np.abs(reloaded - expected)))
        if reloaded.shape != expected.shape or not difference <= SCORE_TOLERANCE:
            raise ExportError(
                f"reloaded SavedModel scores differ from the Keras model by {difference:.3g} "
                f"(shape {reloaded.shape} vs {expected.shape}), above the tolerance {SCORE_TOLERANCE}"
            )
        records = []
        for size in WARMUP_BATCH_SIZES:
            # The check rows repeated up to ``size`` rows; their scores are the Keras model's.
            rows = np.arange(size) % len(expected)
            inputs = {name: np.asarray(check_inputs[name], np.float32)[rows] for name in INPUT_NAMES}
            records.append(WarmupRecord(inputs=inputs, expected=expected[rows]))
        write_warmup_records(staging, records, model_name=MODEL_NAME)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported FM-Lite model version %d to %s (%d rows checked, max score difference %.2g)", version, target, len(expected), difference)
    return target
