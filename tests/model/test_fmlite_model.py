"""FM-Lite architecture: shapes, parameter count, tower independence and the documented equation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.config import FMLiteConfig
from model.fmlite_model import SECTIONS, SIDES, build_fmlite, parameter_count, tower_layer_name

META, DIM = 11, 24
CONFIG = FMLiteConfig(meta_units=(8, 4), image_units=(6,), text_units=(10, 5))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_fmlite(meta_dim=META, embedding_dim=DIM, config=CONFIG)


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    widths = {"meta": META, "image": DIM, "text": DIM}
    return {f"{side}_{section}": rng.normal(size=(7, widths[section])).astype(np.float32) for side in SIDES for section in SECTIONS}


def _dense_params(widths: list[int]) -> int:
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:]))


def test_parameter_count(model):
    towers = _dense_params([META, 8, 4]) + _dense_params([DIM, 6]) + _dense_params([DIM, 10, 5])
    final = (1 + 1 + 4 + 4 + 1) + 1
    assert parameter_count(model) == 2 * towers + final


def test_output_shape_and_range(model, inputs):
    scores = model.predict(inputs, verbose=0)
    assert scores.shape == (7, 1)
    assert np.all((scores > 0) & (scores < 1))


def test_final_layer_reads_concatenation(model):
    score = model.get_layer("score")
    assert score.kernel.shape == (2 * 4 + 3, 1)
    assert model.get_layer("fm_features").output.shape[-1] == 2 * 4 + 3


def test_glance_towers_read_glance_inputs_only(model, inputs):
    # A sub-model from the glance inputs alone builds only if the glance towers need no user input.
    for side in SIDES:
        side_inputs = [model.get_layer(f"{side}_{section}").output for section in SECTIONS]
        outputs = [model.get_layer(tower_layer_name(side, section, len(units) - 1)).output
                   for section, units in zip(SECTIONS, (CONFIG.meta_units, CONFIG.image_units, CONFIG.text_units))]
        tower = keras.Model(side_inputs, outputs)
        reduced = tower.predict([inputs[f"{side}_{section}"] for section in SECTIONS], verbose=0)
        assert [array.shape[1] for array in reduced] == [4, 6, 5]


def _numpy_forward(model: keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """FM-Lite from its weights: towers, s_IF, s_TF, s_MF, one logistic unit."""
    units = {"meta": CONFIG.meta_units, "image": CONFIG.image_units, "text": CONFIG.text_units}
    reduced = {}
    for side in SIDES:
        for section in SECTIONS:
            hidden = inputs[f"{side}_{section}"].astype(np.float64)
            for index in range(len(units[section])):
                kernel, bias = model.get_layer(tower_layer_name(side, section, index)).get_weights()
                hidden = hidden @ kernel + bias
                if index < len(units[section]) - 1:
                    hidden = np.maximum(hidden, 0.0)
            reduced[side, section] = hidden
    s_image = np.sum(reduced["user", "image"] * reduced["glance", "image"], axis=1, keepdims=True)
    s_text = np.sum(reduced["user", "text"] * reduced["glance", "text"], axis=1, keepdims=True)
    cross = np.sum(reduced["user", "meta"] * reduced["glance", "meta"], axis=1, keepdims=True)
    z = np.concatenate([s_image, s_text, reduced["user", "meta"], reduced["glance", "meta"], cross], axis=1)
    kernel, bias = model.get_layer("score").get_weights()
    return 1.0 / (1.0 + np.exp(-(z @ kernel + bias)))


def test_equation_matches_model(inputs):
    model = build_fmlite(meta_dim=META, embedding_dim=DIM, config=CONFIG)
    # Random biases too, so every term of the equation is exercised.
    rng = np.random.default_rng(9)
    model.set_weights([rng.normal(scale=0.3, size=weight.shape).astype(np.float32) for weight in model.get_weights()])
    expected = _numpy_forward(model, inputs)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), expected, atol=1e-5)


def test_build_rejects_bad_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        build_fmlite(meta_dim=0, embedding_dim=DIM)
    with pytest.raises(ValueError, match="meta_units"):
        FMLiteConfig(meta_units=())


def test_default_meta_tower_starts_as_plain_inner_product(inputs):
    # The default meta towers are one linear layer of input width, starting at the identity, so
    # before training <a_u_MF, a_g_MF> is <u_MF, g_MF>: the user's peek rate for the glance's values.
    model = build_fmlite(meta_dim=META, embedding_dim=DIM)
    assert FMLiteConfig().meta_units is None
    for side in SIDES:
        kernel, bias = model.get_layer(tower_layer_name(side, "meta", 0)).get_weights()
        np.testing.assert_array_equal(kernel, np.eye(META))
        assert not bias.any()
    assert model.get_layer("score").kernel.shape == (2 * META + 3, 1)
    reduced = keras.Model(model.inputs, model.get_layer("meta_cross").output)
    cross = reduced.predict(inputs, verbose=0)[:, 0]
    np.testing.assert_allclose(cross, np.sum(inputs["user_meta"] * inputs["glance_meta"], axis=1), rtol=1e-5, atol=1e-5)


def test_identity_towers_for_any_section():
    model = build_fmlite(meta_dim=META, embedding_dim=DIM, config=FMLiteConfig(meta_units=(4,), image_units=None, text_units=None))
    for section in ("image", "text"):
        kernel, _ = model.get_layer(tower_layer_name("glance", section, 0)).get_weights()
        np.testing.assert_array_equal(kernel, np.eye(DIM))
    with pytest.raises(ValueError, match="text_units"):
        FMLiteConfig(text_units=(0,))
