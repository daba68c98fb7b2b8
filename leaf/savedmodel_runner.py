"""In-process TensorFlow runner: the exported SavedModel's ``serving_default`` signature.

Model versions follow TensorFlow Serving's layout ``<base>/<version>/``; without an explicit
version the largest integer version with a ``saved_model.pb`` is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from fmlite.signature import OUTPUT_NAME
from leaf.model_files import ModelLoadError, check_signature, latest_model_version, read_model_metadata
from leaf.profiles import ProfileCache, UserVectors
from leaf.runners import pair_inputs

__all__ = ["ModelLoadError", "SavedModelRunner", "latest_model_version"]

logger = logging.getLogger(__name__)


class SavedModelRunner:
    """Runs one SavedModel version in this process."""

    kind = "savedmodel"

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
        except Exception as error:  # TensorFlow raises many types for a missing or corrupt model
            raise ModelLoadError(f"loading SavedModel {path} failed: {type(error).__name__}: {error}") from error
        self._function, self.input_widths = check_signature(loaded, path)
        self._loaded = loaded
        self.version = str(number)
        self.path = path
        self.metadata = read_model_metadata(path)
        logger.info("loaded SavedModel %s (variant %s) in %.2f s", path, name, time.perf_counter() - started)

    def bind(self, profiles: ProfileCache) -> "SavedModelRunner":
        """Return this runner: it keeps no state per profile version."""
        return self

    def predict_arrays(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score a batch given all six signature inputs as float32 arrays."""
        tensors = {key: self._tf.constant(value) for key, value in arrays.items()}
        return np.asarray(self._function(**tensors)[OUTPUT_NAME]).reshape(-1)

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        return self.predict_arrays(pair_inputs(user, profiles, rows)).astype(np.float32)

    def close(self) -> None:
        self._function = None
        self._loaded = None
