"""Glance encoder: the feature vector ``g = [g_MF, g_IF, g_TF]`` of every glance.

- ``g_MF`` (meta): one-hot category, one-hot subcategory and one-hot format, followed by a
  has-image flag (1 when the glance has an image caption). Each vocabulary is built from the
  content and has an explicit unknown slot for missing values and values not seen at fit time;
- ``g_IF`` (image): the sentence embedding of the image caption, zeros when there is none;
- ``g_TF`` (text): the sentence embedding of ``title + " " + abstract``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from model.tables import GlanceTable

__all__ = [
    "UNKNOWN",
    "META_FIELDS",
    "HAS_IMAGE_COLUMN",
    "SentenceEncoder",
    "MetaVocabulary",
    "GlanceFeatures",
    "encode_glances",
]

logger = logging.getLogger(__name__)

UNKNOWN = "<unknown>"
# Categorical glance fields one-hot encoded into g_MF, in column order.
META_FIELDS = ("category", "subcategory", "format")
HAS_IMAGE_COLUMN = "has_image"


class SentenceEncoder(Protocol):
    """Interface of the text encoder that the glance encoder calls (``model.text_encoder.TextEncoder``)."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MetaVocabulary:
    """Sorted known values of each categorical field; each field also has an ``UNKNOWN`` slot."""

    categories: tuple[str, ...]
    subcategories: tuple[str, ...]
    formats: tuple[str, ...]

    @classmethod
    def fit(cls, glances: GlanceTable) -> "MetaVocabulary":
        """Collect the distinct non-missing values of each field of ``glances``."""
        frame = glances.frame
        values = {field: tuple(sorted(set(frame[field].dropna().tolist()) - {UNKNOWN})) for field in META_FIELDS}
        return cls(categories=values["category"], subcategories=values["subcategory"], formats=values["format"])

    def field_values(self, field: str) -> tuple[str, ...]:
        """Return the known values of ``field`` followed by ``UNKNOWN``: one meta column each."""
        known = {"category": self.categories, "subcategory": self.subcategories, "format": self.formats}[field]
        return (*known, UNKNOWN)

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the meta columns: ``field=value`` per slot, then ``has_image``."""
        names = [f"{field}={value}" for field in META_FIELDS for value in self.field_values(field)]
        return (*names, HAS_IMAGE_COLUMN)

    @property
    def dim(self) -> int:
        return len(self.columns)

    @classmethod
    def from_columns(cls, columns: Sequence[str]) -> "MetaVocabulary":
        """Rebuild the vocabulary from its column names (as stored in a snapshot manifest)."""
        values: dict[str, list[str]] = {field: [] for field in META_FIELDS}
        for name in columns:
            if name == HAS_IMAGE_COLUMN:
                continue
            field, _, value = name.partition("=")
            if field not in values:
                raise ValueError(f"meta column {name!r} names no field of {META_FIELDS}")
            if value != UNKNOWN:
                values[field].append(value)
        vocabulary = cls(tuple(values["category"]), tuple(values["subcategory"]), tuple(values["format"]))
        if vocabulary.columns != tuple(columns):
            raise ValueError("meta columns are not in the order MetaVocabulary writes them")
        return vocabulary

    def transform(self, glances: GlanceTable) -> np.ndarray:
        """Return the ``[len(glances), dim]`` float32 meta matrix ``g_MF``."""
        frame = glances.frame
        meta = np.zeros((len(frame), self.dim), dtype=np.float32)
        offset = 0
        rows = np.arange(len(frame))
        for field in META_FIELDS:
            slots = self.field_values(field)
            index = {value: position for position, value in enumerate(slots[:-1])}
            unknown = len(slots) - 1
            positions = np.fromiter((index.get(value, unknown) for value in frame[field].tolist()), np.int64, len(frame))
            meta[rows, offset + positions] = 1.0
            offset += len(slots)
        meta[:, offset] = frame["image_caption"].notna().to_numpy(dtype=np.float32)
        return meta


@dataclass(frozen=True)
class GlanceFeatures:
    """Feature vectors of glances, row ``i`` belonging to ``ids[i]``."""

    ids: np.ndarray
    meta: np.ndarray
    image: np.ndarray
    text: np.ndarray
    vocabulary: MetaVocabulary
    encoder_name: str

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """Return a map from glance id to row number."""
        return {glance_id: row for row, glance_id in enumerate(self.ids.tolist())}

    @property
    def has_image(self) -> np.ndarray:
        return self.meta[:, -1] > 0.5


def encode_glances(
    glances: GlanceTable,
    *,
    text_encoder: SentenceEncoder,
    vocabulary: MetaVocabulary | None = None,
) -> GlanceFeatures:
    """Encode every glance; fit the meta vocabulary on ``glances`` unless one is given."""
    vocabulary = vocabulary or MetaVocabulary.fit(glances)
    meta = vocabulary.transform(glances)
    text = text_encoder.encode(glances.texts())

    image = np.zeros((len(glances), text_encoder.dim), dtype=np.float32)
    captions = glances.frame["image_caption"]
    with_caption = np.flatnonzero(captions.notna().to_numpy())
    if len(with_caption):
        image[with_caption] = text_encoder.encode([captions.iloc[row] for row in with_caption])
    logger.info(
        "encoded %d glances: meta %d columns, %d with an image caption, text width %d",
        len(glances), vocabulary.dim, len(with_caption), text.shape[1],
    )
    return GlanceFeatures(
        ids=glances.ids.astype(str),
        meta=meta,
        image=image,
        text=text,
        vocabulary=vocabulary,
        encoder_name=text_encoder.name,
    )
