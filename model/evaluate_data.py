"""Inputs of the comparison: encoded glances, user profiles per encoder variant, training sets, test day.

All models see the same features. Training examples come from the training window, with
profiles built over the history window. The held-out test day is scored with profiles built
over a window of the same length that ends the day before it, which is what a daily run would
serve, exactly as ``model.pipeline`` trains and publishes. Only test-day candidates whose glance has
content are scored, because a glance without content has no features for any model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.config import SamplingConfig, UserEncoderConfig, WindowConfig
from model.dataset import ExampleSet, TrainingSet, Windows, build_training_set, profile_events, resolve_windows, test_day_impressions
from model.glance_encoder import GlanceFeatures, encode_glances
from model.mind import BEHAVIORS_FILE, read_mind
from model.tables import SourceData
from model.text_encoder import TextEncoder
from model.user_encoder import UserProfiles, build_user_profiles

__all__ = ["DataError", "EvaluationData", "ProfilePair", "TestDay", "read_source", "prepare_data"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The data directory is not a readable dataset or leaves nothing to evaluate."""


def read_source(path: str | os.PathLike[str]) -> SourceData:
    """Read MIND TSV files (a directory with behaviors.tsv) or the native Parquet layout."""
    path = Path(path)
    if (path / BEHAVIORS_FILE).is_file():
        return read_mind(path)
    from model.parquet import PARQUET_FILES, read_parquet_dataset

    if any((path / name).exists() for name in PARQUET_FILES.values()):
        return read_parquet_dataset(path)
    raise DataError(f"{path} contains neither {BEHAVIORS_FILE} (MIND) nor {sorted(PARQUET_FILES.values())} (Parquet); pass a dataset directory")


@dataclass(frozen=True)
class ProfilePair:
    """Profiles of one user-encoder variant: for training examples and for the test day."""

    training: UserProfiles
    serving: UserProfiles


@dataclass(frozen=True)
class TestDay:
    """Candidates of the held-out day that have content, one row per (impression, glance)."""

    examples: ExampleSet
    impression_ids: np.ndarray
    impressions_total: int
    candidates_total: int


@dataclass
class EvaluationData:
    """Everything the models are trained and scored on; training sets are built on first use."""

    source: SourceData
    windows: Windows
    glances: GlanceFeatures
    seed: int
    # Keyed by the whole (frozen, hashable) encoder config, so that every switch of the user
    # encoder gets its own profiles.
    profiles: dict[UserEncoderConfig, ProfilePair] = field(default_factory=dict)
    training_sets: dict[tuple[UserEncoderConfig, float | None], TrainingSet] = field(default_factory=dict)
    test_days: dict[UserEncoderConfig, TestDay] = field(default_factory=dict)

    def profile_pair(self, encoder: UserEncoderConfig) -> ProfilePair:
        key = encoder
        if key not in self.profiles:
            self.profiles[key] = _build_profiles(self.source, self.windows, self.glances, encoder)
        return self.profiles[key]

    def training_set(self, encoder: UserEncoderConfig, negatives_per_positive: float | None) -> TrainingSet:
        key = (encoder, negatives_per_positive)
        if key not in self.training_sets:
            self.training_sets[key] = build_training_set(
                self.source,
                self.windows,
                glances=self.glances,
                users=self.profile_pair(encoder).training,
                sampling=SamplingConfig(negatives_per_positive=negatives_per_positive),
                seed=self.seed,
            )
        return self.training_sets[key]

    def test_day(self, encoder: UserEncoderConfig) -> TestDay:
        key = encoder
        if key not in self.test_days:
            self.test_days[key] = _build_test_day(self.source, self.windows, self.glances, self.profile_pair(encoder).serving)
        return self.test_days[key]


def _build_profiles(source: SourceData, windows: Windows, glances: GlanceFeatures, encoder: UserEncoderConfig) -> ProfilePair:
    length = windows.history[1] - windows.history[0] + 1
    training = build_user_profiles(
        profile_events(source, windows, days=windows.history), glances, present_day=windows.history[1], window_days=length, config=encoder
    )
    serving = build_user_profiles(
        profile_events(source, windows, days=windows.serving_history),
        glances,
        present_day=windows.serving_history[1],
        window_days=length,
        config=encoder,
    )
    return ProfilePair(training=training, serving=serving)


def _build_test_day(source: SourceData, windows: Windows, glances: GlanceFeatures, serving: UserProfiles) -> TestDay:
    impressions = test_day_impressions(source, windows)
    exploded = impressions.explode(["glance_ids", "labels"], ignore_index=True)
    glance_rows = pd.Index(glances.ids).get_indexer(pd.Index(exploded["glance_ids"].to_numpy(dtype=object)))
    with_content = glance_rows >= 0
    rows = exploded.loc[with_content]
    user_ids = rows["user_id"].to_numpy(dtype=object).astype(str)
    examples = ExampleSet(
        user_ids=user_ids,
        glance_ids=rows["glance_ids"].to_numpy(dtype=object).astype(str),
        user_rows=serving.rows_of(user_ids).astype(np.int64),
        glance_rows=glance_rows[with_content].astype(np.int64),
        labels=rows["labels"].to_numpy(dtype=np.float32),
    )
    if len(examples) == 0:
        raise DataError(f"the test window {windows.to_json()['test']} contains no candidate with content; check the windows or the news files")
    return TestDay(
        examples=examples,
        impression_ids=rows["impression_id"].to_numpy(dtype=np.int64),
        impressions_total=len(impressions),
        candidates_total=len(exploded),
    )


def prepare_data(
    path: str | os.PathLike[str],
    *,
    windows: WindowConfig,
    cache_dir: Path | None,
    text_model_path: Path | None,
    seed: int,
) -> EvaluationData:
    """Read the dataset, place the windows and encode every glance with content."""
    source = read_source(path)
    resolved = resolve_windows(source, windows)
    encoder = TextEncoder(model_path=text_model_path, cache_dir=cache_dir)
    glances = encode_glances(source.glances, text_encoder=encoder)
    logger.info("evaluation data %s: %d glances, windows %s", path, len(glances), resolved.to_json())
    return EvaluationData(source=source, windows=resolved, glances=glances, seed=seed)
