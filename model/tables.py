"""Columnar glance and interaction tables: the format every input reader produces.

The MIND reader (``model.mind``) builds these tables from TSV files. A native Parquet reader
builds the same tables from columns of the same names and types, so everything downstream
(encoders, training set, profiles) depends only on this module.

Schemas (pandas columns, one row per record):

- glances: ``glance_id`` str (unique), ``category`` str, ``subcategory`` str, ``format`` str or
  missing, ``title`` str, ``abstract`` str, ``image_caption`` str or missing;
- interactions: ``impression_id`` int64, ``user_id`` str, ``glance_id`` str, ``timestamp``
  datetime64 (naive, the log's clock), ``peek`` int8 (1 = peeked, 0 = shown and not peeked);
- history: ``user_id`` str, ``glance_id`` str, one row per click logged before the first
  interaction day, without a timestamp (MIND's history column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "GLANCE_COLUMNS",
    "INTERACTION_COLUMNS",
    "HISTORY_COLUMNS",
    "TableSchemaError",
    "GlanceTable",
    "InteractionTable",
    "HistoryTable",
    "SourceData",
]

GLANCE_COLUMNS = ("glance_id", "category", "subcategory", "format", "title", "abstract", "image_caption")
INTERACTION_COLUMNS = ("impression_id", "user_id", "glance_id", "timestamp", "peek")
HISTORY_COLUMNS = ("user_id", "glance_id")

# Columns that may hold missing values (None or NaN); every other column must be complete.
_OPTIONAL_GLANCE_COLUMNS = frozenset({"format", "image_caption"})


class TableSchemaError(ValueError):
    """A table lacks a required column, or a column contains a missing value or a value of the wrong type."""


def _require_columns(name: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise TableSchemaError(f"{name} table is missing columns {missing}; required columns are {list(columns)}")


def _require_complete(name: str, frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> None:
    for column in columns:
        missing = int(frame[column].isna().sum())
        if missing:
            raise TableSchemaError(f"{name} table column {column!r} has {missing} missing values; it must be complete")


def _string_column(name: str, column: str, values: pd.Series) -> pd.Series:
    """Return ``values`` as an object column of Python strings, with None for missing values."""
    present = values.notna()
    result = values.astype(object).where(present, None)
    kind = pd.api.types.infer_dtype(result[present], skipna=True)
    if kind not in ("string", "empty"):
        raise TableSchemaError(f"{name} table column {column!r} must hold strings, found values of type {kind}")
    return result


@dataclass(frozen=True)
class GlanceTable:
    """Content of every known glance, one row per ``glance_id``."""

    frame: pd.DataFrame

    def __post_init__(self) -> None:
        _require_columns("glance", self.frame, GLANCE_COLUMNS)
        frame = self.frame.loc[:, list(GLANCE_COLUMNS)].reset_index(drop=True)
        _require_complete("glance", frame, [c for c in GLANCE_COLUMNS if c not in _OPTIONAL_GLANCE_COLUMNS])
        for column in GLANCE_COLUMNS:
            frame[column] = _string_column("glance", column, frame[column])
        duplicated = frame["glance_id"].duplicated()
        if duplicated.any():
            first = frame.loc[duplicated, "glance_id"].iloc[0]
            raise TableSchemaError(f"glance table has {int(duplicated.sum())} duplicate glance ids (first: {first!r})")
        object.__setattr__(self, "frame", frame)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> np.ndarray:
        return self.frame["glance_id"].to_numpy(dtype=object)

    def texts(self) -> list[str]:
        """Return the text of each glance: ``title + " " + abstract``, stripped."""
        return [f"{title} {abstract}".strip() for title, abstract in zip(self.frame["title"], self.frame["abstract"])]


@dataclass(frozen=True)
class InteractionTable:
    """Logged impressions: one row per glance shown to a user, with the peek label."""

    frame: pd.DataFrame

    def __post_init__(self) -> None:
        _require_columns("interaction", self.frame, INTERACTION_COLUMNS)
        frame = self.frame.loc[:, list(INTERACTION_COLUMNS)].reset_index(drop=True)
        _require_complete("interaction", frame, INTERACTION_COLUMNS)
        if not pd.api.types.is_datetime64_any_dtype(frame["timestamp"]):
            raise TableSchemaError(f"interaction column 'timestamp' must be datetime64, got {frame['timestamp'].dtype}")
        labels = frame["peek"].to_numpy()
        if len(labels) and not np.isin(labels, (0, 1)).all():
            bad = labels[~np.isin(labels, (0, 1))][0]
            raise TableSchemaError(f"interaction column 'peek' must be 0 or 1, found {bad!r}")
        frame["impression_id"] = frame["impression_id"].astype(np.int64)
        frame["peek"] = frame["peek"].astype(np.int8)
        for column in ("user_id", "glance_id"):
            frame[column] = _string_column("interaction", column, frame[column])
        object.__setattr__(self, "frame", frame)

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class HistoryTable:
    """Clicks logged before the first interaction day, without timestamps."""

    frame: pd.DataFrame

    def __post_init__(self) -> None:
        _require_columns("history", self.frame, HISTORY_COLUMNS)
        frame = self.frame.loc[:, list(HISTORY_COLUMNS)].reset_index(drop=True)
        _require_complete("history", frame, HISTORY_COLUMNS)
        for column in HISTORY_COLUMNS:
            frame[column] = _string_column("history", column, frame[column])
        object.__setattr__(self, "frame", frame)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def empty(cls) -> "HistoryTable":
        return cls(pd.DataFrame({column: pd.Series([], dtype=object) for column in HISTORY_COLUMNS}))


@dataclass(frozen=True)
class SourceData:
    """Everything a reader returns: glance content, logged impressions and undated history clicks."""

    glances: GlanceTable
    interactions: InteractionTable
    history: HistoryTable

    def first_day(self) -> pd.Timestamp:
        """Return midnight of the first day with an interaction."""
        if len(self.interactions) == 0:
            raise TableSchemaError("interaction table is empty, so it has no first day")
        return self.interactions.frame["timestamp"].min().normalize()

    def last_day(self) -> pd.Timestamp:
        """Return midnight of the last day with an interaction."""
        if len(self.interactions) == 0:
            raise TableSchemaError("interaction table is empty, so it has no last day")
        return self.interactions.frame["timestamp"].max().normalize()
