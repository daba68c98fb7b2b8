"""Sentence encoder: bundled all-MiniLM-L6-v2, unit vectors, and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from model.text_encoder import TextEncoder, TextEncoderError, default_model_path, text_key

TEXTS = [
    "Dog dies protecting Florida children from a deadly snake",
    "A family dog was killed by a venomous coral snake while guarding kids",
    "Stocks fall as bond yields climb for a third day",
]

# Loads all-MiniLM-L6-v2 and encodes with it.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_cache_vectors(tmp_path_factory):
    cache = tmp_path_factory.mktemp("fresh-text-cache")
    encoder = TextEncoder(cache_dir=cache)
    vectors = encoder.encode(TEXTS)
    return cache, encoder, vectors


def test_encoder_shape_and_norm(fresh_cache_vectors):
    _, encoder, vectors = fresh_cache_vectors
    assert encoder.dim == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encoded_count == 3
    assert encoder.model_loaded


def test_encoder_semantics(fresh_cache_vectors):
    _, _, vectors = fresh_cache_vectors
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2


def test_encoder_second_run_uses_cache(fresh_cache_vectors):
    cache, first, vectors = fresh_cache_vectors
    second = TextEncoder(cache_dir=cache)
    again = second.encode(list(reversed(TEXTS)) + [TEXTS[0]])
    assert second.encoded_count == 0
    assert not second.model_loaded
    np.testing.assert_array_equal(again[:3], vectors[::-1])
    np.testing.assert_array_equal(again[3], vectors[0])
    assert second.name == first.name
    assert len(list(first.cache_dir.glob("chunk-*.npz"))) == 1


def test_encoder_encodes_only_new_texts(fresh_cache_vectors):
    cache, _, _ = fresh_cache_vectors
    encoder = TextEncoder(cache_dir=cache)
    vectors = encoder.encode([TEXTS[1], "An entirely new headline about a marathon in the rain"])
    assert encoder.encoded_count == 1
    assert vectors.shape == (2, 384)


def test_encoder_empty_input(tmp_path):
    encoder = TextEncoder(cache_dir=tmp_path)
    assert encoder.encode([]).shape == (0, 384)
    assert not encoder.model_loaded


def test_other_model_directory_gets_own_cache(tmp_path):
    # A model directory with the same weights but one changed file is another encoder.
    source = default_model_path()
    copy = tmp_path / "tuned-minilm"
    for path in source.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "README.md":
                target.write_text("fine-tuned copy\n")
            else:
                target.symlink_to(path)
    default = TextEncoder(cache_dir=tmp_path / "cache")
    tuned = TextEncoder(model_path=copy, cache_dir=tmp_path / "cache")
    assert tuned.name.startswith("tuned-minilm@")
    assert tuned.name != default.name
    assert tuned.cache_dir != default.cache_dir
    assert tuned.dim == 384


def test_encoder_rejects_bad_model_path(tmp_path):
    with pytest.raises(TextEncoderError, match="not a sentence-transformers model directory"):
        TextEncoder(model_path=tmp_path)
    with pytest.raises(TextEncoderError, match="batch_size"):
        TextEncoder(batch_size=0)


def test_text_key_is_sha256():
    assert text_key("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert text_key("a") != text_key("a ")
