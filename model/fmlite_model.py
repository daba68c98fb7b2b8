"""FM-Lite: a factorisation-machine-style scorer over user and glance feature sections (Keras 3).

Inputs, one row per (user, glance) pair, all float32:
``user_meta [B, M]``, ``user_image [B, D]``, ``user_text [B, D]``,
``glance_meta [B, M]``, ``glance_image [B, D]``, ``glance_text [B, D]``
(``M`` meta columns, ``D`` sentence-embedding width).

Each section ``X`` in (MF, IF, TF) is reduced by its own stack of dense layers, separately on
each side: ``a_u_X = tower_u_X(u_X)`` and ``a_g_X = tower_g_X(g_X)``. Their width ``k_X`` is the
last layer's width. Hidden layers use the configured activation and the last layer is linear.
A section configured with ``None`` gets one linear layer of its input width, initialised to the
identity (see ``FMLiteConfig``). Then

    s_IF = <a_u_IF, a_g_IF>                          [B, 1]
    s_TF = <a_u_TF, a_g_TF>                          [B, 1]
    s_MF = [a_u_MF, a_g_MF, <a_u_MF, a_g_MF>]        [B, 2 k_MF + 1]
    z    = concat(s_IF, s_TF, s_MF)                  [B, 2 k_MF + 3]
    p    = sigmoid(z . w + b)                        [B, 1]   (layer "score")

Glance towers read glance inputs only and user towers user inputs only, so a server can
compute ``a_g_X`` once per glance and ``a_u_X`` once per request, leaving a few dot products
and one logistic unit per pair. Layer names fix the weights' layout for such a NumPy path:
``{side}_{section}_dense_{i}`` for the towers and ``score`` for the output.
"""

from __future__ import annotations

import keras

from model.config import FMLiteConfig

__all__ = ["SECTIONS", "SIDES", "tower_layer_name", "build_fmlite", "parameter_count"]

SECTIONS = ("meta", "image", "text")
SIDES = ("user", "glance")


def tower_layer_name(side: str, section: str, index: int) -> str:
    """Return the name of dense layer ``index`` of the ``side`` tower of ``section``."""
    return f"{side}_{section}_dense_{index}"


def _tower(inputs: keras.KerasTensor, *, side: str, section: str, units: tuple[int, ...] | None, activation: str) -> keras.KerasTensor:
    if units is None:
        # One square linear layer starting at the identity, so <a_u, a_g> starts at <u, g>.
        return keras.layers.Dense(
            int(inputs.shape[-1]), activation=None, kernel_initializer="identity", name=tower_layer_name(side, section, 0)
        )(inputs)
    hidden = inputs
    for index, width in enumerate(units):
        last = index == len(units) - 1
        hidden = keras.layers.Dense(
            width,
            activation=None if last else activation,
            name=tower_layer_name(side, section, index),
        )(hidden)
    return hidden


def build_fmlite(*, meta_dim: int, embedding_dim: int, config: FMLiteConfig = FMLiteConfig()) -> keras.Model:
    """Build the uncompiled FM-Lite model; its output ``score`` has shape ``[B, 1]``."""
    if meta_dim < 1 or embedding_dim < 1:
        raise ValueError(f"meta_dim and embedding_dim must be positive, got {meta_dim} and {embedding_dim}")
    widths = {"meta": meta_dim, "image": embedding_dim, "text": embedding_dim}
    units = {"meta": config.meta_units, "image": config.image_units, "text": config.text_units}
    inputs = {
        f"{side}_{section}": keras.Input(shape=(widths[section],), dtype="float32", name=f"{side}_{section}")
        for side in SIDES
        for section in SECTIONS
    }
    reduced = {
        (side, section): _tower(inputs[f"{side}_{section}"], side=side, section=section, units=units[section], activation=config.activation)
        for side in SIDES
        for section in SECTIONS
    }
    s_image = keras.layers.Dot(axes=1, name="s_image")([reduced["user", "image"], reduced["glance", "image"]])
    s_text = keras.layers.Dot(axes=1, name="s_text")([reduced["user", "text"], reduced["glance", "text"]])
    meta_cross = keras.layers.Dot(axes=1, name="meta_cross")([reduced["user", "meta"], reduced["glance", "meta"]])
    concatenated = keras.layers.Concatenate(name="fm_features")(
        [s_image, s_text, reduced["user", "meta"], reduced["glance", "meta"], meta_cross]
    )
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(concatenated)
    return keras.Model(inputs=inputs, outputs=score, name="fmlite")


def parameter_count(model: keras.Model) -> int:
    """Return the number of trainable and non-trainable weights of ``model``."""
    return int(model.count_params())
