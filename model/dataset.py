"""Day windows, user-profile events, the FM-Lite training set and the held-out test day.

Days are numbered from the first logged day (day 0) in the log's own clock.

- The history window builds the user profiles of the training examples.
- The training window's impressions on glances with content become labelled (user, glance)
  examples, with negatives sub-sampled to a fixed ratio per positive. Users are split into
  train and validation by a stable hash of the user id.
- The test window is kept whole for replay and evaluation.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmlite.sharding import user_hash
from model.config import PipelineConfig, SamplingConfig, WindowConfig
from model.glance_encoder import GlanceFeatures
from model.mind import read_mind
from model.tables import SourceData
from model.user_encoder import EVENT_COLUMNS, LOGGED_COLUMN, UserProfiles

__all__ = [
    "WindowError",
    "Windows",
    "ExampleSet",
    "TrainingSet",
    "resolve_windows",
    "profile_events",
    "validation_mask",
    "build_training_set",
    "feature_arrays",
    "held_out_impressions",
    "test_day_impressions",
    "load_test_day",
]

logger = logging.getLogger(__name__)


class WindowError(ValueError):
    """The configured windows do not fit inside the days the log covers."""


@dataclass(frozen=True)
class Windows:
    """Resolved windows as inclusive day numbers relative to ``origin`` (day 0, the first logged day).

    ``history_column_day`` is the day the undated history clicks carry in the training
    profiles' window (the day before it starts), or None when they are left out. Every other
    window dates them to the day before it starts (see ``profile_events``).
    """

    origin: dt.date
    history: tuple[int, int]
    train: tuple[int, int]
    test: tuple[int, int]
    history_column_day: int | None

    def date_of(self, day: int) -> dt.date:
        return self.origin + dt.timedelta(days=day)

    @property
    def serving_history(self) -> tuple[int, int]:
        """History window of the published profiles: same length, ending the day before the test window."""
        length = self.history[1] - self.history[0] + 1
        return (self.test[0] - length, self.test[0] - 1)

    def to_json(self) -> dict[str, Any]:
        """Return the windows as ISO dates, for reports and snapshot manifests."""

        def span(days: tuple[int, int]) -> dict[str, str]:
            return {"first": self.date_of(days[0]).isoformat(), "last": self.date_of(days[1]).isoformat()}

        return {
            "origin": self.origin.isoformat(),
            "history": span(self.history),
            "train": span(self.train),
            "test": span(self.test),
            "serving_history": span(self.serving_history),
            "history_column": None if self.history_column_day is None else self.date_of(self.history_column_day).isoformat(),
        }


def _day_numbers(timestamps: pd.Series, origin: dt.date) -> np.ndarray:
    midnight = timestamps.dt.normalize().to_numpy(dtype="datetime64[D]")
    return (midnight - np.datetime64(origin, "D")).astype(np.int64)


def resolve_windows(data: SourceData, config: WindowConfig) -> Windows:
    """Place the history, training and test windows on the log's days; raise when they do not fit."""
    origin = data.first_day().date()
    last = data.last_day().date()
    start = config.start or origin
    if start < origin:
        raise WindowError(f"window start {start} is before the first logged day {origin}")
    first_day = (start - origin).days
    history = (first_day, first_day + config.history_days - 1)
    train = (history[1] + 1, history[1] + config.train_days)
    test = (train[1] + 1, train[1] + config.test_days)
    needed = origin + dt.timedelta(days=test[1])
    if needed > last:
        total = config.history_days + config.train_days + config.test_days
        raise WindowError(
            f"windows need {total} days from {start} to {needed}, but the log ends on {last}; "
            "shorten history_days, train_days or test_days, or move start earlier"
        )
    return Windows(
        origin=origin,
        history=history,
        train=train,
        test=test,
        history_column_day=history[0] - 1 if config.include_history_column else None,
    )


def profile_events(data: SourceData, windows: Windows, *, days: tuple[int, int]) -> pd.DataFrame:
    """Return the events (``user_id, glance_id, day, peek``) of the user encoder over ``days``.

    The undated history clicks join as peeks unless the window config left them out; their
    ``logged`` column is False (no impression was logged with them), True for every other
    event. They are dated to the day before ``days`` starts, so they have the same age in every
    window. With one fixed date, the serving window (two days after the training window) would
    decay them more than the training window did. The model would then be served profiles with
    a different mix of evidence from the profiles it was trained on.
    """
    frame = data.interactions.frame
    day = _day_numbers(frame["timestamp"], windows.origin)
    inside = (day >= days[0]) & (day <= days[1])
    logged = pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(dtype=object)[inside],
            "glance_id": frame["glance_id"].to_numpy(dtype=object)[inside],
            "day": day[inside],
            "peek": frame["peek"].to_numpy(dtype=np.int8)[inside],
            LOGGED_COLUMN: np.ones(int(inside.sum()), dtype=bool),
        }
    )
    if windows.history_column_day is None or len(data.history) == 0:
        return logged
    history = data.history.frame
    clicks = pd.DataFrame(
        {
            "user_id": history["user_id"].to_numpy(dtype=object),
            "glance_id": history["glance_id"].to_numpy(dtype=object),
            "day": np.full(len(history), days[0] - 1, dtype=np.int64),
            "peek": np.ones(len(history), dtype=np.int8),
            LOGGED_COLUMN: np.zeros(len(history), dtype=bool),
        }
    )
    return pd.concat([clicks, logged], ignore_index=True).loc[:, [*EVENT_COLUMNS, LOGGED_COLUMN]]


def validation_mask(user_ids: np.ndarray, *, sampling: SamplingConfig) -> np.ndarray:
    """Return True for users in the validation split: ``mmh3(id, split_seed) mod 100 < percent``.

    The hash seed differs from the shard and experiment-bucket seeds, so the split is
    independent of where a user is served.
    """
    unique, inverse = np.unique(np.asarray(user_ids, dtype=object).astype(str), return_inverse=True)
    buckets = np.fromiter((user_hash(user_id, seed=sampling.split_seed) % 100 for user_id in unique.tolist()), np.int64, len(unique))
    return (buckets < sampling.validation_percent)[inverse.reshape(-1)]


@dataclass(frozen=True)
class ExampleSet:
    """Labelled (user, glance) pairs; ``user_rows`` indexes the profiles (-1 = cold start)."""

    user_ids: np.ndarray
    glance_ids: np.ndarray
    user_rows: np.ndarray
    glance_rows: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def positives(self) -> int:
        return int(self.labels.sum())

    def counts(self) -> dict[str, int]:
        return {
            "examples": len(self),
            "positives": self.positives,
            "negatives": len(self) - self.positives,
            "users": int(len(np.unique(self.user_ids))),
            "cold_start_examples": int((self.user_rows < 0).sum()),
        }


@dataclass(frozen=True)
class TrainingSet:
    """Train and validation examples of the training window, and counts for the report."""

    train: ExampleSet
    validation: ExampleSet
    counts: dict[str, Any]


def _subsample(labels: np.ndarray, ratio: float | None, rng: np.random.Generator) -> np.ndarray:
    """Return sorted row numbers keeping every positive and ``ratio`` negatives per positive."""
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    if ratio is None:
        return np.arange(len(labels))
    keep = min(len(negatives), int(round(ratio * len(positives))))
    chosen = rng.choice(negatives, size=keep, replace=False) if keep else np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([positives, chosen]))


def build_training_set(
    data: SourceData,
    windows: Windows,
    *,
    glances: GlanceFeatures,
    users: UserProfiles,
    sampling: SamplingConfig,
    seed: int,
) -> TrainingSet:
    """Build the examples of the training window: impressions whose glance has content."""
    frame = data.interactions.frame
    day = _day_numbers(frame["timestamp"], windows.origin)
    inside = (day >= windows.train[0]) & (day <= windows.train[1])
    user_ids = frame["user_id"].to_numpy(dtype=object)[inside]
    glance_ids = frame["glance_id"].to_numpy(dtype=object)[inside]
    labels = frame["peek"].to_numpy(dtype=np.int8)[inside]

    glance_rows = pd.Index(glances.ids).get_indexer(pd.Index(glance_ids))
    with_content = glance_rows >= 0
    window_counts = {
        "impressions": int(inside.sum()),
        "peeks": int(labels.sum()),
        "impressions_with_content": int(with_content.sum()),
        "peeks_with_content": int(labels[with_content].sum()),
    }
    user_ids = user_ids[with_content]
    glance_ids = glance_ids[with_content]
    glance_rows = glance_rows[with_content]
    labels = labels[with_content]
    user_rows = users.rows_of(user_ids)
    in_validation = validation_mask(user_ids, sampling=sampling)

    splits: dict[str, ExampleSet] = {}
    for stream, (name, selected) in enumerate((("train", ~in_validation), ("validation", in_validation))):
        rows = np.flatnonzero(selected)
        kept = rows[_subsample(labels[rows], sampling.negatives_per_positive, np.random.default_rng([seed, stream]))]
        splits[name] = ExampleSet(
            user_ids=user_ids[kept].astype(str),
            glance_ids=glance_ids[kept].astype(str),
            user_rows=user_rows[kept].astype(np.int64),
            glance_rows=glance_rows[kept].astype(np.int64),
            labels=labels[kept].astype(np.float32),
        )
    counts: dict[str, Any] = {"window": window_counts, "sampling": asdict(sampling)}
    for name in ("train", "validation"):
        selected = ~in_validation if name == "train" else in_validation
        counts[name] = splits[name].counts()
        counts[name]["negatives_before_sampling"] = int((labels[selected] == 0).sum())
    logger.info(
        "training set: %d train examples (%d positive), %d validation examples (%d positive) from %d impressions with content",
        len(splits["train"]), splits["train"].positives, len(splits["validation"]), splits["validation"].positives,
        window_counts["impressions_with_content"],
    )
    return TrainingSet(train=splits["train"], validation=splits["validation"], counts=counts)


def feature_arrays(examples: ExampleSet, *, users: UserProfiles, glances: GlanceFeatures) -> dict[str, np.ndarray]:
    """Return the six float32 model inputs of ``examples``, cold-start rows for users without a profile."""
    known = examples.user_rows >= 0
    arrays: dict[str, np.ndarray] = {}
    for section in ("meta", "image", "text"):
        table = getattr(users, section)
        user_section = np.tile(np.asarray(users.cold_start[section], np.float32), (len(examples), 1))
        user_section[known] = table[examples.user_rows[known]]
        arrays[f"user_{section}"] = user_section
        arrays[f"glance_{section}"] = getattr(glances, section)[examples.glance_rows].astype(np.float32)
    return arrays


def held_out_impressions(data: SourceData, windows: Windows) -> pd.DataFrame:
    """Return the test window's impressions, one row per logged impression, in time order.

    Columns: ``impression_id`` (int64), ``user_id`` (str), ``time`` (datetime64), ``glance_ids``
    (list of str, in logged order, including glances without content) and ``labels`` (list of
    int, 1 = peeked, aligned with ``glance_ids``).
    """
    frame = data.interactions.frame
    day = _day_numbers(frame["timestamp"], windows.origin)
    inside = frame.loc[(day >= windows.test[0]) & (day <= windows.test[1])]
    grouped = inside.groupby("impression_id", sort=False)
    result = pd.DataFrame(
        {
            "user_id": grouped["user_id"].first(),
            "time": grouped["timestamp"].first(),
            "glance_ids": grouped["glance_id"].agg(list),
            "labels": grouped["peek"].agg(lambda values: [int(value) for value in values]),
        }
    ).reset_index()
    result = result.sort_values(["time", "impression_id"], kind="stable").reset_index(drop=True)
    return result.loc[:, ["impression_id", "user_id", "time", "glance_ids", "labels"]]


# Older name, kept for callers. ``__test__ = False`` stops pytest from collecting the function
# as a test when a test module imports it under this name.
test_day_impressions = held_out_impressions
held_out_impressions.__test__ = False  # type: ignore[attr-defined]


def load_test_day(config: PipelineConfig) -> pd.DataFrame:
    """Read the data of ``config`` and return its held-out test impressions (see ``held_out_impressions``)."""
    data = read_mind(config.data_dir)
    windows = resolve_windows(data, config.windows)
    return held_out_impressions(data, windows)
