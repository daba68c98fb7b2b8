"""In-process TensorFlow runner: the exported SavedModel's ``serving_default`` signature.

Model versions follow TensorFlow Serving's layout ``<base>/<version>/``; the largest integer
version with a ``saved_model.pb`` is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fmlite.signature import INPUT_NAMES, OUTPUT_NAME, SIGNATURE_NAME
from leaf.profiles import ProfileCache, UserVectors

__all__ = ["ModelLoadError", "SavedModelRunner", "latest_model_version"]

logger = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A model version is missing, fails to load, or has an unexpected signature."""


def latest_model_version(base: str | Path) -> int:
    """Return the largest complete integer version under ``base`` (TF Serving layout)."""
    base = Path(base)
    versions = [int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()] if base.is_dir() else []
    if not versions:
        raise ModelLoadError(f"no model version under {base}; expected {base}/<integer version>/saved_model.pb")
    return max(versions)


class SavedModelRunner:
    """Runs one SavedModel version in this process."""

    def __init__(self, name: str, base: str | Path, *, version: int | None = None):
        import tensorflow as tf  # imported here so that importing leaf does not load TensorFlow

        self._tf = tf
        self.name = name
        self.base = Path(base)
        number = version if version is not None else latest_model_version(self.base)
        path = self.base / str(number)
        started = time.perf_counter()
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:
            raise ModelLoadError(f"loading SavedModel {path} failed: {error}") from error
        if SIGNATURE_NAME not in loaded.signatures:
            raise ModelLoadError(f"SavedModel {path} has no {SIGNATURE_NAME!r} signature; found {list(loaded.signatures)}")
        function = loaded.signatures[SIGNATURE_NAME]
        inputs = set(function.structured_input_signature[1])
        if inputs != set(INPUT_NAMES):
            raise ModelLoadError(f"SavedModel {path} signature inputs are {sorted(inputs)}; expected {sorted(INPUT_NAMES)}")
        if OUTPUT_NAME not in function.structured_outputs:
            raise ModelLoadError(f"SavedModel {path} signature has no output {OUTPUT_NAME!r}")
        self._loaded = loaded
        self._function = function
        self.version = str(number)
        self.path = path
        logger.info("loaded SavedModel %s (variant %s) in %.2f s", path, name, time.perf_counter() - started)

    def predict_arrays(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Score a batch given all six signature inputs as float32 arrays."""
        tensors = {key: self._tf.constant(value) for key, value in arrays.items()}
        return np.asarray(self._function(**tensors)[OUTPUT_NAME]).reshape(-1)

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        count = len(rows)
        glances = profiles.glances
        arrays = {
            "user_meta": np.broadcast_to(user.meta, (count, user.meta.shape[0])),
            "user_image": np.broadcast_to(user.image, (count, user.image.shape[0])),
            "user_text": np.broadcast_to(user.text, (count, user.text.shape[0])),
            "glance_meta": glances.meta[rows],
            "glance_image": glances.image[rows],
            "glance_text": glances.text[rows],
        }
        return self.predict_arrays(arrays).astype(np.float32)
