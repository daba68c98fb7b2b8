"""Glance encoder: one-hot meta with unknown slots, has-image flag, caption and text embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.glance_encoder import HAS_IMAGE_COLUMN, UNKNOWN, MetaVocabulary, encode_glances
from model.tables import GlanceTable


def _table(rows: list[dict]) -> GlanceTable:
    defaults = {"title": "t", "abstract": "", "image_caption": None, "format": None}
    return GlanceTable(pd.DataFrame([{**defaults, **row} for row in rows]))


FIT_ROWS = [
    {"glance_id": "N1", "category": "sports", "subcategory": "golf", "format": "ar"},
    {"glance_id": "N2", "category": "news", "subcategory": "golf", "format": "vi"},
    {"glance_id": "N3", "category": "news", "subcategory": "politics", "format": None},
]


def test_vocabulary_columns():
    vocabulary = MetaVocabulary.fit(_table(FIT_ROWS))
    assert vocabulary.categories == ("news", "sports")
    assert vocabulary.subcategories == ("golf", "politics")
    assert vocabulary.formats == ("ar", "vi")
    assert vocabulary.columns == (
        "category=news", "category=sports", f"category={UNKNOWN}",
        "subcategory=golf", "subcategory=politics", f"subcategory={UNKNOWN}",
        "format=ar", "format=vi", f"format={UNKNOWN}",
        HAS_IMAGE_COLUMN,
    )
    assert MetaVocabulary.from_columns(vocabulary.columns) == vocabulary


def test_vocabulary_rejects_foreign_columns():
    with pytest.raises(ValueError, match="names no field"):
        MetaVocabulary.from_columns(["colour=red", HAS_IMAGE_COLUMN])
    with pytest.raises(ValueError, match="not in the order"):
        MetaVocabulary.from_columns(["category=b", "category=a", f"category={UNKNOWN}"])


def test_transform_one_hot_and_unknown_slots():
    vocabulary = MetaVocabulary.fit(_table(FIT_ROWS))
    later = _table(
        [
            {"glance_id": "N4", "category": "sports", "subcategory": "golf", "format": "ar", "image_caption": "a putt"},
            {"glance_id": "N5", "category": "weather", "subcategory": "storms", "format": "ss"},
            {"glance_id": "N6", "category": "news", "subcategory": "politics", "format": None},
        ]
    )
    meta = vocabulary.transform(later)
    columns = vocabulary.columns
    assert meta.shape == (3, len(columns))
    assert meta.dtype == np.float32
    hot = [sorted(columns[j] for j in np.flatnonzero(row)) for row in meta]
    assert hot[0] == ["category=sports", "format=ar", HAS_IMAGE_COLUMN, "subcategory=golf"]
    assert hot[1] == [f"category={UNKNOWN}", f"format={UNKNOWN}", f"subcategory={UNKNOWN}"]
    assert hot[2] == ["category=news", f"format={UNKNOWN}", "subcategory=politics"]


@pytest.mark.slow
def test_encode_glances_caption_and_text(text_encoder):
    table = _table(
        [
            {"glance_id": "N1", "category": "sports", "subcategory": "golf", "format": "ar",
             "title": "Woods wins again", "abstract": "A fifth green jacket.", "image_caption": "a golfer lifts a trophy"},
            {"glance_id": "N2", "category": "news", "subcategory": "politics", "format": "vi",
             "title": "Council votes on budget", "abstract": ""},
        ]
    )
    features = encode_glances(table, text_encoder=text_encoder)
    assert features.ids.tolist() == ["N1", "N2"]
    assert features.meta.shape == (2, features.vocabulary.dim)
    assert features.has_image.tolist() == [True, False]
    expected_text = text_encoder.encode(["Woods wins again A fifth green jacket.", "Council votes on budget"])
    np.testing.assert_allclose(features.text, expected_text, atol=1e-6)
    np.testing.assert_allclose(features.image[0], text_encoder.encode(["a golfer lifts a trophy"])[0], atol=1e-6)
    assert not features.image[1].any()
    assert features.encoder_name == text_encoder.name
    assert features.index() == {"N1": 0, "N2": 1}
