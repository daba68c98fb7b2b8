"""Windows, user split, negative sub-sampling and the held-out test day on the real sample."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fmlite.sharding import shard_of
from model.config import PipelineConfig, SamplingConfig, WindowConfig
from model.dataset import (
    WindowError,
    build_training_set,
    held_out_impressions,
    load_test_day,
    profile_events,
    resolve_windows,
    validation_mask,
)
from model.glance_encoder import GlanceFeatures, MetaVocabulary
from model.user_encoder import build_user_profiles


def test_default_windows_on_sample(mind_data):
    windows = resolve_windows(mind_data, WindowConfig())
    spans = windows.to_json()
    assert spans["history"] == {"first": "2019-11-09", "last": "2019-11-11"}
    assert spans["train"] == {"first": "2019-11-12", "last": "2019-11-13"}
    assert spans["test"] == {"first": "2019-11-14", "last": "2019-11-14"}
    assert spans["serving_history"] == {"first": "2019-11-11", "last": "2019-11-13"}
    assert spans["history_column"] == "2019-11-08"


def test_windows_that_do_not_fit(mind_data):
    with pytest.raises(WindowError, match="the log ends on 2019-11-14"):
        resolve_windows(mind_data, WindowConfig(history_days=28, train_days=7, test_days=1))
    with pytest.raises(WindowError, match="before the first logged day"):
        resolve_windows(mind_data, WindowConfig(start=dt.date(2019, 11, 1)))
    with pytest.raises(ValueError, match="history_days must be at least 1"):
        WindowConfig(history_days=0)


def test_windows_with_later_start(mind_data):
    windows = resolve_windows(mind_data, WindowConfig(history_days=1, train_days=1, test_days=1, start=dt.date(2019, 11, 12)))
    assert windows.history == (3, 3)
    assert windows.test == (5, 5)


def test_profile_events_window(mind_data):
    windows = resolve_windows(mind_data, WindowConfig())
    events = profile_events(mind_data, windows, days=windows.history)
    logged = events[events["day"] >= 0]
    assert logged["day"].between(0, 2).all()
    per_day = logged.groupby("day").size().to_dict()
    assert per_day == {0: 16_285, 1: 19_377, 2: 39_924}
    history = events[events["day"] == -1]
    assert len(history) == 138_932
    assert (history["peek"] == 1).all()

    # The serving window starts two days later and dates the same clicks to the day before it,
    # so they reach both windows at the same age.
    serving = profile_events(mind_data, windows, days=windows.serving_history)
    undated = serving[~serving["logged"]]
    assert len(undated) == 138_932
    assert (undated["day"] == windows.serving_history[0] - 1).all()
    assert (serving.loc[serving["logged"], "day"] >= windows.serving_history[0]).all()

    without = resolve_windows(mind_data, WindowConfig(include_history_column=False))
    assert (profile_events(mind_data, without, days=without.history)["day"] >= 0).all()


def test_validation_split_stable_and_near_20_percent(mind_data):
    users = mind_data.interactions.frame["user_id"].unique()
    sampling = SamplingConfig()
    mask = validation_mask(users, sampling=sampling)
    assert 0.17 < mask.mean() < 0.23
    np.testing.assert_array_equal(mask, validation_mask(users, sampling=sampling))
    # Repeated ids get the same answer.
    doubled = validation_mask(np.concatenate([users[:50], users[:50]]), sampling=sampling)
    np.testing.assert_array_equal(doubled[:50], doubled[50:])
    # The split seed differs from the shard hash: validation users spread over both shards.
    shards = {shard_of(user, 2) for user in users[mask]}
    assert shards == {0, 1}


@pytest.fixture(scope="module")
def plain_features(mind_data) -> GlanceFeatures:
    """Glance features with zero embeddings: the training-set tests need ids and meta only."""
    vocabulary = MetaVocabulary.fit(mind_data.glances)
    count = len(mind_data.glances)
    return GlanceFeatures(
        ids=mind_data.glances.ids.astype(str),
        meta=vocabulary.transform(mind_data.glances),
        image=np.zeros((count, 8), np.float32),
        text=np.zeros((count, 8), np.float32),
        vocabulary=vocabulary,
        encoder_name="zeros",
    )


@pytest.fixture(scope="module")
def windows_and_profiles(mind_data, plain_features):
    windows = resolve_windows(mind_data, WindowConfig())
    profiles = build_user_profiles(
        profile_events(mind_data, windows, days=windows.history), plain_features, present_day=windows.history[1], window_days=3
    )
    return windows, profiles


def _training_set(mind_data, plain_features, windows_and_profiles, **sampling):
    windows, profiles = windows_and_profiles
    seed = sampling.pop("seed", 0)
    return build_training_set(
        mind_data, windows, glances=plain_features, users=profiles, sampling=SamplingConfig(**sampling), seed=seed
    )


def test_training_set_counts(mind_data, plain_features, windows_and_profiles):
    training = _training_set(mind_data, plain_features, windows_and_profiles)
    window = training.counts["window"]
    assert window["impressions"] == 33_943 + 40_455
    assert window["impressions_with_content"] == 1_371 + 832
    assert window["peeks_with_content"] == 46 + 27
    assert training.train.positives + training.validation.positives == 73
    for split in (training.train, training.validation):
        assert len(split) - split.positives == 2 * split.positives
        assert set(np.unique(split.labels)) == {0.0, 1.0}
        assert np.isin(split.glance_ids, plain_features.ids).all()
    assert not set(training.train.user_ids) & set(training.validation.user_ids)
    assert training.counts["train"]["negatives_before_sampling"] > training.counts["train"]["negatives"]


def test_training_set_sampling_options(mind_data, plain_features, windows_and_profiles):
    everything = _training_set(mind_data, plain_features, windows_and_profiles, negatives_per_positive=None)
    assert len(everything.train) + len(everything.validation) == 2_203
    one = _training_set(mind_data, plain_features, windows_and_profiles, negatives_per_positive=1.0)
    assert len(one.train) == 2 * one.train.positives
    with pytest.raises(ValueError, match="negatives_per_positive"):
        SamplingConfig(negatives_per_positive=0)


def test_training_set_seeded(mind_data, plain_features, windows_and_profiles):
    first = _training_set(mind_data, plain_features, windows_and_profiles, seed=3)
    again = _training_set(mind_data, plain_features, windows_and_profiles, seed=3)
    other = _training_set(mind_data, plain_features, windows_and_profiles, seed=4)
    np.testing.assert_array_equal(first.train.glance_ids, again.train.glance_ids)
    np.testing.assert_array_equal(first.train.user_ids, again.train.user_ids)
    assert not np.array_equal(first.train.glance_ids, other.train.glance_ids) or not np.array_equal(
        first.train.user_ids, other.train.user_ids
    )


def test_training_set_user_rows(mind_data, plain_features, windows_and_profiles):
    _, profiles = windows_and_profiles
    training = _training_set(mind_data, plain_features, windows_and_profiles)
    rows = training.train.user_rows
    known = rows >= 0
    assert known.any()
    assert (~known).any()
    np.testing.assert_array_equal(profiles.ids[rows[known]], training.train.user_ids[known])
    assert not np.isin(training.train.user_ids[~known], profiles.ids).any()


def test_held_out_day(mind_data, sample_dir):
    windows = resolve_windows(mind_data, WindowConfig())
    day = held_out_impressions(mind_data, windows)
    assert list(day.columns) == ["impression_id", "user_id", "time", "glance_ids", "labels"]
    assert len(day) == 968
    assert (day["time"].dt.normalize() == pd.Timestamp("2019-11-14")).all()
    assert day["time"].is_monotonic_increasing
    assert day["glance_ids"].map(len).sum() == 39_375
    assert day["labels"].map(sum).sum() == 1_489
    assert (day["glance_ids"].map(len) == day["labels"].map(len)).all()

    # Spot check one logged row against the interaction table, order preserved.
    first = day.iloc[0]
    logged = mind_data.interactions.frame
    logged = logged[logged["impression_id"] == first["impression_id"]]
    assert first["glance_ids"] == logged["glance_id"].tolist()
    assert first["labels"] == logged["peek"].astype(int).tolist()

    loaded = load_test_day(PipelineConfig(data_dir=sample_dir))
    pd.testing.assert_frame_equal(loaded, day)
