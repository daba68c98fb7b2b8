"""Models that FM-Lite is compared with, on the same six inputs as FM-Lite's serving signature.

Every Keras model here takes ``user_meta, user_image, user_text, glance_meta, glance_image,
glance_text`` and returns a peek probability of shape ``[B, 1]``. With ``u`` and ``g`` the
concatenations ``[u_MF, u_IF, u_TF]`` and ``[g_MF, g_IF, g_TF]`` (width ``M + 2 D`` each):

- Baseline: ``(1 + cos(u, g)) / 2``, no training (the leaf's ``cosine`` runner computes the same);
- Linear: logistic regression, ``sigmoid(w . [u, g] + b)``;
- Dense: an MLP with ReLU layers over ``[u, g, <u, g>]``, then one logistic unit;
- Wide & Deep: ``sigmoid(wide + deep)``. The wide part is linear over ``[u, g]`` and over the
  cross-product features of the categorical section, ``u_MF * g_MF`` element-wise: the user's
  peek rate for the glance's own category, subcategory and format value, zero elsewhere. The
  deep part is an MLP with ReLU layers over ``[u, g]``.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from model.fmlite_model import SECTIONS, SIDES
from model.quality_names import DISPLAY_NAMES, FMLITE_NAMES, MODEL_NAMES

__all__ = ["MODEL_NAMES", "DISPLAY_NAMES", "FMLITE_NAMES", "cosine_scores", "build_linear", "build_dense", "build_wide_deep", "model_builders"]


# Hidden layer widths of the Dense model and of the deep part of Wide & Deep.
DEFAULT_HIDDEN = (256, 128)


def cosine_scores(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Return ``(1 + cos(u, g)) / 2`` for each row of the six input arrays, as float32."""
    dot = np.zeros(len(arrays["user_meta"]), dtype=np.float64)
    user_norm = np.zeros_like(dot)
    glance_norm = np.zeros_like(dot)
    for section in SECTIONS:
        user = arrays[f"user_{section}"].astype(np.float64)
        glance = arrays[f"glance_{section}"].astype(np.float64)
        dot += np.einsum("ij,ij->i", user, glance)
        user_norm += np.einsum("ij,ij->i", user, user)
        glance_norm += np.einsum("ij,ij->i", glance, glance)
    cosine = dot / np.maximum(np.sqrt(user_norm * glance_norm), 1e-12)
    return ((1.0 + cosine) / 2.0).astype(np.float32)


def _inputs(meta_dim: int, embedding_dim: int) -> dict[str, keras.KerasTensor]:
    widths = {"meta": meta_dim, "image": embedding_dim, "text": embedding_dim}
    return {
        f"{side}_{section}": keras.Input(shape=(widths[section],), dtype="float32", name=f"{side}_{section}")
        for side in SIDES
        for section in SECTIONS
    }


def _side(inputs: dict[str, keras.KerasTensor], side: str) -> keras.KerasTensor:
    return keras.layers.Concatenate(name=f"{side}_features")([inputs[f"{side}_{section}"] for section in SECTIONS])


def _mlp(features: keras.KerasTensor, hidden: tuple[int, ...], prefix: str) -> keras.KerasTensor:
    for index, width in enumerate(hidden):
        features = keras.layers.Dense(width, activation="relu", name=f"{prefix}_dense_{index}")(features)
    return features


def build_linear(*, meta_dim: int, embedding_dim: int) -> keras.Model:
    """Build logistic regression over the concatenated user and glance features."""
    inputs = _inputs(meta_dim, embedding_dim)
    features = keras.layers.Concatenate(name="features")([_side(inputs, "user"), _side(inputs, "glance")])
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(features)
    return keras.Model(inputs=inputs, outputs=score, name="linear")


def build_dense(*, meta_dim: int, embedding_dim: int, hidden: tuple[int, ...] = DEFAULT_HIDDEN) -> keras.Model:
    """Build the MLP over the concatenation and the inner product of the user and glance features."""
    inputs = _inputs(meta_dim, embedding_dim)
    user, glance = _side(inputs, "user"), _side(inputs, "glance")
    inner = keras.layers.Dot(axes=1, name="inner_product")([user, glance])
    features = keras.layers.Concatenate(name="features")([user, glance, inner])
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(_mlp(features, hidden, "deep"))
    return keras.Model(inputs=inputs, outputs=score, name="dense")


def build_wide_deep(*, meta_dim: int, embedding_dim: int, hidden: tuple[int, ...] = DEFAULT_HIDDEN) -> keras.Model:
    """Build Wide & Deep: a linear wide part with meta cross features plus an MLP deep part."""
    inputs = _inputs(meta_dim, embedding_dim)
    user, glance = _side(inputs, "user"), _side(inputs, "glance")
    concatenated = keras.layers.Concatenate(name="features")([user, glance])
    cross = keras.layers.Multiply(name="meta_cross")([inputs["user_meta"], inputs["glance_meta"]])
    wide = keras.layers.Dense(1, name="wide")(keras.layers.Concatenate(name="wide_features")([concatenated, cross]))
    deep = keras.layers.Dense(1, name="deep_logit")(_mlp(concatenated, hidden, "deep"))
    logit = keras.layers.Add(name="logit")([wide, deep])
    score = keras.layers.Activation("sigmoid", name="score")(logit)
    return keras.Model(inputs=inputs, outputs=score, name="wide_deep")


def model_builders() -> dict[str, Callable[..., keras.Model]]:
    """Return the builder of each trainable comparison model, keyed by name (FM-Lite excluded)."""
    return {"linear": build_linear, "dense": build_dense, "wide_deep": build_wide_deep}
