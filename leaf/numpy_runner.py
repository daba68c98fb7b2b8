"""NumPy fast path: FM-Lite's weights from the SavedModel's variables, evaluated without TensorFlow calls.

FM-Lite reduces each section ``X`` of each side by its own dense tower, ``a_u_X = tower_u_X(u_X)``
and ``a_g_X = tower_g_X(g_X)``, and scores

    p = sigmoid(w_I s_IF + w_T s_TF + w_um . a_u_MF + w_gm . a_g_MF + w_c <a_u_MF, a_g_MF> + b)

with ``s_IF = <a_u_IF, a_g_IF>`` and ``s_TF = <a_u_TF, a_g_TF>`` (final layer ``score``, input order
``s_image, s_text, a_user_meta, a_glance_meta, meta_cross``). Every term is linear in the glance
side once the user side is fixed, so ``bind`` computes per glance, once per model and profile
version,

    A_g = [a_g_IF, a_g_TF, a_g_MF]        c_g = w_gm . a_g_MF

and ``score`` computes per request ``v_u = [w_I a_u_IF, w_T a_u_TF, w_c a_u_MF]`` and
``c_u = w_um . a_u_MF + b``, so a chunk costs one gather and one matrix-vector product:
``z = A_g[rows] v_u + c_g[rows] + c_u``. Arithmetic is float64, so the scores differ from
TensorFlow's float32 evaluation by TensorFlow's rounding only.

When the glance meta tower is one linear layer (``a_g_MF = W g_MF + b_g``, the default: as wide
as the meta input) and glance meta rows are sparse (one-hot values: a few non-zeros of about
170 columns), the meta part of ``A_g`` would be the widest and cost the most to gather. Then
``<a_g_MF, w_c a_u_MF> = g_MF . r_u + b_g . w_c a_u_MF`` with ``r_u = W^T (w_c a_u_MF)``
computed once per user, and ``bind`` keeps each glance's non-zero meta columns and values
instead (``K`` per glance, padded with zero values): a chunk gathers ``k_I + k_T + 2 K`` numbers
per glance instead of ``k_I + k_T + k_MF``.

A bound runner keeps ``(v_u, c_u)`` of up to ``USER_SIDE_CACHE_SIZE`` users, keyed by
``UserVectors.key`` and evicted oldest first, because L1 sends every chunk of a request to the
leaf as its own call. The cache belongs to one (model version, profile version) binding, so a
reload starts with an empty one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Hashable, Mapping

import numpy as np

from fmlite.signature import INPUT_NAMES
from leaf.metrics import USER_SIDE_CACHE_COUNTS
from leaf.model_files import ModelLoadError, check_signature, latest_model_version, read_model_metadata
from leaf.profiles import ProfileCache, UserVectors

__all__ = ["ACTIVATIONS", "SPARSE_META_SHARE", "USER_SIDE_CACHE_SIZE", "FMLiteWeights", "NumPyRunner", "load_fmlite_weights"]

logger = logging.getLogger(__name__)

SECTIONS = ("meta", "image", "text")
# Input order of the final layer ``score`` that this evaluation implements.
FINAL_INPUT_ORDER = ["s_image", "s_text", "a_user_meta", "a_glance_meta", "meta_cross"]
# Users whose reduced vectors a bound runner caches. An entry is 8 * (k_I + k_T + k_M + 1) bytes
# of floats plus about 300 bytes of dict entry and array headers (an estimate). With 32 image
# and text values and 170 meta columns the cache takes about 2 MiB.
USER_SIDE_CACHE_SIZE = 1024


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# Keras activation names of the tower hidden layers that this runner evaluates.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
}


class FMLiteWeights:
    """Tower and output weights of one FM-Lite version, as float64 arrays."""

    def __init__(
        self,
        towers: Mapping[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]],
        final_kernel: np.ndarray,
        final_bias: float,
        activation: str,
    ):
        if activation not in ACTIVATIONS:
            raise ModelLoadError(f"tower activation {activation!r} is not supported by the NumPy runner; supported: {sorted(ACTIVATIONS)}")
        self.towers = towers
        self.activation = ACTIVATIONS[activation]
        self.activation_name = activation
        k_meta = towers["user", "meta"][-1][0].shape[1]
        expected = 2 * k_meta + 3
        if final_kernel.shape != (expected,):
            raise ModelLoadError(f"final layer has {final_kernel.shape[0]} inputs, expected 2 * {k_meta} + 3 = {expected}")
        self.k_meta = k_meta
        self.w_image = float(final_kernel[0])
        self.w_text = float(final_kernel[1])
        self.w_user_meta = final_kernel[2 : 2 + k_meta]
        self.w_glance_meta = final_kernel[2 + k_meta : 2 + 2 * k_meta]
        self.w_cross = float(final_kernel[2 + 2 * k_meta])
        self.bias = float(final_bias)

    def reduce(self, side: str, section: str, x: np.ndarray) -> np.ndarray:
        """Apply the ``side`` tower of ``section`` to rows (or one row) ``x``."""
        hidden = np.asarray(x, dtype=np.float64)
        layers = self.towers[side, section]
        for index, (kernel, bias) in enumerate(layers):
            hidden = hidden @ kernel + bias
            if index < len(layers) - 1:
                hidden = self.activation(hidden)
        return hidden

    def pair_logits(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Return the logit ``z`` of every (user, glance) row of the six signature inputs."""
        user = {section: self.reduce("user", section, arrays[f"user_{section}"]) for section in SECTIONS}
        glance = {section: self.reduce("glance", section, arrays[f"glance_{section}"]) for section in SECTIONS}
        return (
            self.w_image * np.einsum("ij,ij->i", user["image"], glance["image"])
            + self.w_text * np.einsum("ij,ij->i", user["text"], glance["text"])
            + user["meta"] @ self.w_user_meta
            + glance["meta"] @ self.w_glance_meta
            + self.w_cross * np.einsum("ij,ij->i", user["meta"], glance["meta"])
            + self.bias
        )


def load_fmlite_weights(path: str | Path) -> tuple[FMLiteWeights, dict[str, int], Mapping[str, object]]:
    """Read the weights of the SavedModel in ``path``; return them, the input widths and the metadata."""
    import tensorflow as tf

    path = Path(path)
    metadata = read_model_metadata(path)
    if not metadata:
        raise ModelLoadError(f"{path} has no assets.extra/fmlite_model.json; the NumPy runner needs its layer layout")
    if list(metadata.get("final_input_order", [])) != FINAL_INPUT_ORDER:
        raise ModelLoadError(f"{path}: final layer input order {metadata.get('final_input_order')} is not {FINAL_INPUT_ORDER}")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many types for a missing or corrupt model
        raise ModelLoadError(f"loading SavedModel {path} failed: {type(error).__name__}: {error}") from error
    _, widths = check_signature(loaded, path)
    values = {variable.name.split(":")[0]: variable.numpy().astype(np.float64) for variable in loaded.variables}
    towers: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for side in ("user", "glance"):
        for section in SECTIONS:
            names = metadata.get("towers", {}).get(f"{side}_{section}")
            if not names:
                raise ModelLoadError(f"{path}: the layer layout lists no tower {side}_{section}")
            layers = []
            for name in names:
                if f"{name}/kernel" not in values or f"{name}/bias" not in values:
                    raise ModelLoadError(f"{path}: variables of layer {name!r} are missing; found {sorted(values)[:8]}...")
                layers.append((values[f"{name}/kernel"], values[f"{name}/bias"]))
            if layers[0][0].shape[0] != widths[f"{side}_{section}"]:
                raise ModelLoadError(f"{path}: layer {names[0]} takes {layers[0][0].shape[0]} inputs, the signature gives {widths[f'{side}_{section}']}")
            towers[side, section] = layers
    final = metadata.get("final_layer", "score")
    if f"{final}/kernel" not in values:
        raise ModelLoadError(f"{path}: variables of the final layer {final!r} are missing")
    activation = str(metadata.get("config", {}).get("activation", "relu"))
    weights = FMLiteWeights(towers, values[f"{final}/kernel"].reshape(-1), float(values[f"{final}/bias"].reshape(-1)[0]), activation)
    return weights, widths, metadata


# The sparse meta path is used when a glance has at most this share of the meta columns set.
SPARSE_META_SHARE = 0.25


def _sparse_meta(weights: FMLiteWeights, meta: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return each glance's non-zero meta columns and values, padded to the longest row.

    None when the glance meta tower is not one linear layer or the rows are not sparse enough
    for the gather to beat the dense reduced vectors.
    """
    if len(weights.towers["glance", "meta"]) != 1 or meta.ndim != 2 or not meta.shape[0]:
        return None
    nonzero = meta != 0
    per_row = nonzero.sum(axis=1)
    width = max(int(per_row.max()), 1)
    if width > SPARSE_META_SHARE * meta.shape[1]:
        return None
    # Stable sort puts each row's non-zero columns first, in column order.
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :width]
    values = np.take_along_axis(meta, order, axis=1).astype(np.float64)
    values[np.arange(width)[None, :] >= per_row[:, None]] = 0.0
    return np.ascontiguousarray(order.astype(np.int32)), np.ascontiguousarray(values)


class NumPyRunner:
    """FM-Lite on precomputed glance vectors; ``bind`` prepares them for one profile version."""

    kind = "numpy"

    def __init__(self, name: str, base: str | Path, *, version: int | None = None):
        started = time.perf_counter()
        self.name = name
        self.base = Path(base)
        number = version if version is not None else latest_model_version(self.base)
        self.path = self.base / str(number)
        self.version = str(number)
        self.weights, self.input_widths, self.metadata = load_fmlite_weights(self.path)
        self._profiles: ProfileCache | None = None
        self._glance_matrix = np.zeros((0, 0))
        self._glance_offset = np.zeros(0)
        self._meta_columns: np.ndarray | None = None
        self._meta_values: np.ndarray | None = None
        self._user_sides: dict[Hashable, tuple[np.ndarray, np.ndarray | None, float]] = {}
        logger.info("loaded FM-Lite weights of %s for the NumPy runner (variant %s) in %.2f s", self.path, name, time.perf_counter() - started)

    def bind(self, profiles: ProfileCache) -> "NumPyRunner":
        """Return a runner sharing these weights with the glance side of ``profiles`` precomputed."""
        started = time.perf_counter()
        bound = object.__new__(NumPyRunner)
        bound.__dict__.update(self.__dict__)
        weights = self.weights
        glances = profiles.glances
        a_meta = weights.reduce("glance", "meta", glances.meta)
        a_image = weights.reduce("glance", "image", glances.image)
        a_text = weights.reduce("glance", "text", glances.text)
        bound._glance_offset = a_meta @ weights.w_glance_meta
        sparse = _sparse_meta(weights, np.asarray(glances.meta))
        if sparse is None:
            bound._glance_matrix = np.ascontiguousarray(np.concatenate([a_image, a_text, a_meta], axis=1))
            bound._meta_columns = bound._meta_values = None
        else:
            bound._glance_matrix = np.ascontiguousarray(np.concatenate([a_image, a_text], axis=1))
            bound._meta_columns, bound._meta_values = sparse
        bound._profiles = profiles
        bound._user_sides = {}
        logger.info(
            "precomputed %d reduced glance vectors of width %d%s for model %s and profiles %s in %.3f s",
            len(glances), bound._glance_matrix.shape[1],
            "" if sparse is None else f" plus {sparse[0].shape[1]} sparse meta columns",
            self.version, profiles.version, time.perf_counter() - started,
        )
        return bound

    def user_side(self, user: UserVectors) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Return ``(v_u, r_u, c_u)`` of one user; ``r_u`` is None on the dense meta path."""
        weights = self.weights
        a_meta = weights.reduce("user", "meta", user.meta)
        a_image = weights.reduce("user", "image", user.image)
        a_text = weights.reduce("user", "text", user.text)
        offset = float(a_meta @ weights.w_user_meta + weights.bias)
        meta_vector = weights.w_cross * a_meta
        if self._meta_columns is None:
            return np.concatenate([weights.w_image * a_image, weights.w_text * a_text, meta_vector]), None, offset
        kernel, bias = weights.towers["glance", "meta"][0]
        return (
            np.concatenate([weights.w_image * a_image, weights.w_text * a_text]),
            kernel @ meta_vector,
            offset + float(bias @ meta_vector),
        )

    def _cached_user_side(self, user: UserVectors) -> tuple[np.ndarray, np.ndarray | None, float]:
        key = user.key
        if key is None:
            return self.user_side(user)
        cache = self._user_sides
        found = cache.get(key)
        if found is not None:
            USER_SIDE_CACHE_COUNTS.hits += 1
            return found
        USER_SIDE_CACHE_COUNTS.misses += 1
        found = self.user_side(user)
        for array in found[:2]:
            if array is not None:
                array.flags.writeable = False
        if len(cache) >= USER_SIDE_CACHE_SIZE:
            # Evict the oldest entry (dicts keep insertion order). The reload thread may score
            # warm-up rows on this runner while it is being installed, hence the default.
            cache.pop(next(iter(cache), None), None)
        cache[key] = found
        return found

    def score(self, user: UserVectors, profiles: ProfileCache, rows: np.ndarray) -> np.ndarray:
        if profiles is not self._profiles:
            raise RuntimeError(
                f"NumPy runner of model {self.version} is bound to profiles "
                f"{None if self._profiles is None else self._profiles.version}, not {profiles.version}; call bind() first"
            )
        vector, meta_weights, offset = self._cached_user_side(user)
        logits = self._glance_matrix[rows] @ vector + self._glance_offset[rows] + offset
        if meta_weights is not None:
            logits += np.einsum("ij,ij->i", meta_weights[self._meta_columns[rows]], self._meta_values[rows])
        return _sigmoid(logits).astype(np.float32)

    def predict_arrays(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score explicit (user, glance) rows of the six signature inputs."""
        missing = [name for name in INPUT_NAMES if name not in arrays]
        if missing:
            raise ValueError(f"inputs lack {missing}")
        return _sigmoid(self.weights.pair_logits(arrays)).astype(np.float32)

    def close(self) -> None:
        self._profiles = None
        self._glance_matrix = np.zeros((0, 0))
        self._glance_offset = np.zeros(0)
        self._meta_columns: np.ndarray | None = None
        self._meta_values: np.ndarray | None = None
        self._user_sides = {}
