"""Model runners of a leaf: one interface, several ways to turn profiles into scores.

A runner scores one user against a set of glance rows of a ``ProfileCache`` and returns peek
probabilities. The leaf config picks the runner of the FM-Lite variants:

- ``numpy`` (``leaf.numpy_runner``): the SavedModel's weights evaluated with NumPy on reduced
  glance vectors computed once per model and profile version;
- ``savedmodel`` (``leaf.savedmodel_runner``): in-process TensorFlow;
- ``tfserving`` (``leaf.tfserving_runner``): TensorFlow Serving's PredictionService over gRPC.

The ``cosine`` baseline needs no model files. ``bind`` returns the runner prepared for one
profile version; a leaf scores only with runners bound to the profiles of the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from leaf.profiles import ProfileCache, UserVectors

__all__ = [
    "RUNNER_KINDS",
    "ModelRunner",
    "PairwiseModel",
    "RunnerOptions",
    "CosineRunner",
    "pair_inputs",
    "build_runner",
]

RUNNER_KINDS = ("numpy", "savedmodel", "tfserving")


class ModelRunner(Protocol):
    """Scores glances for one user."""

    # Variant name served, e.g. "fmlite" or "cosine".
    name: str
    # Version of the loaded model ("builtin" for runners without model files).
    version: str
    # "numpy", "savedmodel", "tfserving" or "cosine".
    kind: str

    def bind(self, profiles: ProfileCache) -> "ModelRunner":
        """Return a runner ready to score rows of ``profiles``."""
        ...

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        """Return float32 peek probabilities, one per entry of ``rows`` (glance table rows)."""
        ...

    def close(self) -> None:
        """Release the model; called once no state refers to the runner any more."""
        ...


class PairwiseModel(Protocol):
    """A runner of an exported model that also scores explicit (user, glance) input rows."""

    name: str
    version: str
    # Width of each of the six signature inputs.
    input_widths: Mapping[str, int]
    # Contents of ``assets.extra/fmlite_model.json`` ({} when absent).
    metadata: Mapping[str, object]

    def predict_arrays(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score rows given the six signature inputs, ``[B, width]`` float32 each."""
        ...


@dataclass(frozen=True)
class RunnerOptions:
    """Settings of the runners that talk to another process (TensorFlow Serving)."""

    tfserving_address: str | None = None
    # Model name that TensorFlow Serving serves the variant under (its --model_name).
    tfserving_model_name: str | None = None
    # Deadline of one Predict call, in seconds.
    tfserving_timeout_s: float = 2.0
    # Largest gRPC message either end accepts; chunks are split to stay below it.
    grpc_max_message_bytes: int = 4 * 1024 * 1024
    # How long to wait for TensorFlow Serving to report a version AVAILABLE, in seconds.
    tfserving_wait_s: float = 120.0


def pair_inputs(user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Return the six signature inputs for one user and ``rows`` of the glance table."""
    count = len(rows)
    glances = profiles.glances
    return {
        "user_meta": np.broadcast_to(user.meta, (count, user.meta.shape[0])),
        "user_image": np.broadcast_to(user.image, (count, user.image.shape[0])),
        "user_text": np.broadcast_to(user.text, (count, user.text.shape[0])),
        "glance_meta": glances.meta[rows],
        "glance_image": glances.image[rows],
        "glance_text": glances.text[rows],
    }


class CosineRunner:
    """Baseline: cosine similarity of the concatenated user and glance features, mapped to [0, 1].

    score = (1 + cos([u_MF, u_IF, u_TF], [g_MF, g_IF, g_TF])) / 2
    """

    kind = "cosine"

    def __init__(self, name: str = "cosine"):
        self.name = name
        self.version = "builtin"

    def bind(self, profiles: ProfileCache) -> "CosineRunner":
        return self

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        glances = profiles.glances
        dot = glances.meta[rows] @ user.meta + glances.image[rows] @ user.image + glances.text[rows] @ user.text
        glance_norm = np.sqrt(
            np.einsum("ij,ij->i", glances.meta[rows], glances.meta[rows])
            + np.einsum("ij,ij->i", glances.image[rows], glances.image[rows])
            + np.einsum("ij,ij->i", glances.text[rows], glances.text[rows])
        )
        user_norm = np.sqrt(user.meta @ user.meta + user.image @ user.image + user.text @ user.text)
        denominator = np.maximum(glance_norm * user_norm, 1e-12)
        return ((1.0 + dot / denominator) * 0.5).astype(np.float32)

    def close(self) -> None:
        pass


def build_runner(kind: str, name: str, base: str, *, version: int | None = None, options: RunnerOptions = RunnerOptions()) -> ModelRunner:
    """Load version ``version`` (default: the newest) of variant ``name`` from ``base`` with runner ``kind``."""
    if kind == "numpy":
        from leaf.numpy_runner import NumPyRunner

        return NumPyRunner(name, base, version=version)
    if kind == "savedmodel":
        from leaf.savedmodel_runner import SavedModelRunner

        return SavedModelRunner(name, base, version=version)
    if kind == "tfserving":
        from leaf.tfserving_runner import TFServingRunner

        if not options.tfserving_address:
            raise ValueError("runner tfserving needs the TensorFlow Serving address (--tfserving-address HOST:PORT)")
        return TFServingRunner(
            name,
            base,
            address=options.tfserving_address,
            model_name=options.tfserving_model_name or name,
            version=version,
            timeout_s=options.tfserving_timeout_s,
            max_message_bytes=options.grpc_max_message_bytes,
            wait_s=options.tfserving_wait_s,
        )
    raise ValueError(f"unknown runner {kind!r}; available: {', '.join(RUNNER_KINDS)}")
