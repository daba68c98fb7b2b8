"""Model runners of a leaf: one interface, several ways to turn profiles into scores.

A runner scores one user against a set of glance rows of the profile cache and returns peek
probabilities. Runners are chosen per variant in the leaf config: ``savedmodel`` (in-process
TensorFlow, the default for FM-Lite) and ``cosine`` (the baseline, no model files). Later
runners (TF Serving over gRPC, a NumPy fast path) implement the same interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from leaf.profiles import ProfileCache, UserVectors

__all__ = ["ModelRunner", "CosineRunner"]


class ModelRunner(Protocol):
    """Scores glances for one user."""

    # Variant name served, e.g. "fmlite" or "cosine".
    name: str
    # Version of the loaded model ("builtin" for runners without model files).
    version: str

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        """Return float32 peek probabilities, one per entry of ``rows`` (glance table rows)."""
        ...


class CosineRunner:
    """Baseline: cosine similarity of the concatenated user and glance features, mapped to [0, 1].

    score = (1 + cos([u_MF, u_IF, u_TF], [g_MF, g_IF, g_TF])) / 2
    """

    def __init__(self, name: str = "cosine"):
        self.name = name
        self.version = "builtin"

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
