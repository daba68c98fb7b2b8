"""User encoder: beta-interval factor against SciPy, decay weights and profiles worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from model.config import UserEncoderConfig, WindowConfig
from model.dataset import profile_events, resolve_windows
from model.glance_encoder import GlanceFeatures, MetaVocabulary
from model.tables import GlanceTable
from model.user_encoder import HistoryExposure, beta_interval_factor, build_user_profiles, decay_weights

COUNT_PAIRS = [(0, 0), (0, 1), (1, 0), (0, 25), (25, 0), (1, 1), (3, 97), (40, 960), (250, 250), (7, 3)]


@pytest.mark.parametrize(("peeks", "non_peeks"), COUNT_PAIRS)
def test_beta_factor_matches_scipy(peeks, non_peeks):
    a, b = peeks + 1, non_peeks + 1
    expected = 1.0 - (beta.ppf(0.975, a, b) - beta.ppf(0.025, a, b))
    assert beta_interval_factor(peeks, non_peeks) == pytest.approx(expected, abs=1e-12)


def test_beta_factor_vectorised_and_bounded():
    peeks = np.array([pair[0] for pair in COUNT_PAIRS])
    non_peeks = np.array([pair[1] for pair in COUNT_PAIRS])
    factors = beta_interval_factor(peeks, non_peeks)
    assert factors.shape == (len(COUNT_PAIRS),)
    for factor, (a, b) in zip(factors, COUNT_PAIRS):
        assert factor == pytest.approx(float(beta_interval_factor(a, b)), abs=1e-12)
    assert np.all((factors > 0) & (factors < 1))
    # No events: the uniform prior's central 95% interval is 0.95 wide.
    assert float(beta_interval_factor(0, 0)) == pytest.approx(0.05)


def test_beta_factor_grows_with_evidence():
    # Same 10% peek rate, more events: a narrower interval, so a larger factor.
    factors = [float(beta_interval_factor(n, 9 * n)) for n in (1, 10, 100, 1000)]
    assert factors == sorted(factors)
    assert factors[-1] > 0.9


def test_beta_factor_rejects_negative_counts():
    with pytest.raises(ValueError, match="must not be negative"):
        beta_interval_factor(-1, 3)


def test_decay_weights():
    weights = decay_weights(np.array([10, 9, 7, 3]), present_day=10, window_days=3)
    assert weights[0] == pytest.approx(1.0)
    assert weights[1] == pytest.approx(math.exp(-1 / 3))
    assert weights[2] == pytest.approx(math.exp(-1))
    assert weights[3] == pytest.approx(math.exp(-7 / 3))
    with pytest.raises(ValueError, match="window_days must be positive"):
        decay_weights(np.array([1]), present_day=1, window_days=0)


def _unit(index: int, dim: int = 4) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[index] = 1.0
    return vector


@pytest.fixture()
def tiny_glances() -> GlanceFeatures:
    table = GlanceTable(
        pd.DataFrame(
            {
                "glance_id": ["G1", "G2", "G3"],
                "category": ["a", "b", "a"],
                "subcategory": ["x", "x", "x"],
                "format": ["ar", "ar", "ar"],
                "title": ["one", "two", "three"],
                "abstract": ["", "", ""],
                "image_caption": ["a caption", None, None],
            }
        )
    )
    vocabulary = MetaVocabulary.fit(table)
    text = np.stack([_unit(0), _unit(1), (_unit(0) + _unit(1)) / np.sqrt(2)]).astype(np.float32)
    image = np.stack([_unit(2), np.zeros(4), np.zeros(4)]).astype(np.float32)
    return GlanceFeatures(
        ids=table.ids.astype(str), meta=vocabulary.transform(table), image=image, text=text, vocabulary=vocabulary, encoder_name="hand-made"
    )


@pytest.fixture()
def tiny_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["U1", "U1", "U1", "U1", "U2", "U3"],
            "glance_id": ["G1", "G2", "G3", "UNKNOWN", "UNKNOWN", "G2"],
            "day": [2, 1, -1, 2, 2, 0],
            "peek": [1, 0, 1, 1, 1, 0],
        }
    )


PLAIN_RATES = UserEncoderConfig(meta_log_lift=False)


def test_profiles_worked_example(tiny_glances, tiny_events):
    profiles = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3, config=PLAIN_RATES)
    columns = list(tiny_glances.vocabulary.columns)
    assert columns == [
        "category=a", "category=b", "category=<unknown>",
        "subcategory=x", "subcategory=<unknown>",
        "format=ar", "format=<unknown>", "has_image",
    ]
    # U2 saw only a glance without content, so it has no profile.
    assert profiles.ids.tolist() == ["U1", "U3"]
    assert profiles.peeks.tolist() == [2, 0]
    assert profiles.impressions.tolist() == [3, 1]

    w1, w2, w3 = 1.0, math.exp(-1 / 3), math.exp(-1)
    n = float(beta_interval_factor(2, 1))
    u1 = dict(zip(columns, profiles.meta[0]))
    assert u1["category=a"] == pytest.approx(n * (w1 + w3) / (w1 + w3), rel=1e-6)
    assert u1["category=b"] == 0.0
    assert u1["category=<unknown>"] == 0.0
    assert u1["subcategory=x"] == pytest.approx(n * (w1 + w3) / (w1 + w2 + w3), rel=1e-6)
    assert u1["format=ar"] == pytest.approx(n * (w1 + w3) / (w1 + w2 + w3), rel=1e-6)
    assert u1["has_image"] == pytest.approx(n, rel=1e-6)

    expected_text = (w1 * tiny_glances.text[0] + w3 * tiny_glances.text[2]) / (w1 + w3)
    np.testing.assert_allclose(profiles.text[0], expected_text, rtol=1e-6)
    np.testing.assert_allclose(profiles.image[0], _unit(2), rtol=1e-6)

    # U3 never peeked: zero rates, zero text and image.
    assert not profiles.meta[1].any()
    assert not profiles.text[1].any()
    assert not profiles.image[1].any()

    for section in ("meta", "image", "text"):
        np.testing.assert_allclose(profiles.cold_start[section], getattr(profiles, section).mean(axis=0), rtol=1e-6)


def test_profiles_ablation_switches(tiny_glances, tiny_events):
    plain = build_user_profiles(
        tiny_events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(normalize=False, decay=False, meta_log_lift=False)
    )
    u1 = dict(zip(tiny_glances.vocabulary.columns, plain.meta[0]))
    assert u1["category=a"] == pytest.approx(1.0)
    assert u1["subcategory=x"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(plain.text[0], (tiny_glances.text[0] + tiny_glances.text[2]) / 2, rtol=1e-6)

    decay_only = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(normalize=False, meta_log_lift=False))
    w2, w3 = math.exp(-1 / 3), math.exp(-1)
    assert dict(zip(tiny_glances.vocabulary.columns, decay_only.meta[0]))["subcategory=x"] == pytest.approx((1 + w3) / (1 + w2 + w3), rel=1e-6)

    slow_decay = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(decay_days=30.0))
    assert slow_decay.window_days == 30.0
    assert slow_decay.options["decay_days"] == 30.0


def _with_history_clicks(tiny_events: pd.DataFrame) -> pd.DataFrame:
    # G2 clicked from the history column (no impression logged with it) by U1 and by a user U4
    # who has nothing else.
    return pd.concat(
        [
            tiny_events.assign(logged=True),
            pd.DataFrame({"user_id": ["U1", "U4"], "glance_id": ["G2", "G2"], "day": [-1, -1], "peek": [1, 1], "logged": [False, False]}),
        ],
        ignore_index=True,
    )


def test_history_clicks_count_as_estimated_impressions(tiny_glances, tiny_events):
    events = _with_history_clicks(tiny_events)
    profiles = build_user_profiles(events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(normalize=False, decay=False, meta_log_lift=False))
    columns = list(tiny_glances.vocabulary.columns)
    assert profiles.ids.tolist() == ["U1", "U3", "U4"]
    # Counts are of logged impressions only.
    assert profiles.peeks.tolist() == [2, 0, 0]
    assert profiles.impressions.tolist() == [3, 1, 0]
    # Logged impressions with content: G1 (peeked), G2, G3 (peeked) of U1 and G2 of U3, so the
    # peek rate p is 1/2 and the mix e is category a 1/2, b 1/2, subcategory x 1. A history click
    # stands for 1/p = 2 impressions with that mix.
    u1 = dict(zip(columns, profiles.meta[0]))
    assert u1["category=a"] == pytest.approx(2 / (2 + 2 * 0.5))
    assert u1["category=b"] == pytest.approx(1 / (1 + 2 * 0.5))
    assert u1["subcategory=x"] == pytest.approx(3 / (3 + 2 * 1.0))
    u4 = dict(zip(columns, profiles.meta[2]))
    assert u4["category=a"] == 0.0
    assert u4["category=b"] == pytest.approx(1.0)
    assert u4["subcategory=x"] == pytest.approx(0.5)
    # Text averages every peek, history clicks included.
    np.testing.assert_allclose(profiles.text[0], (tiny_glances.text[0] + tiny_glances.text[1] + tiny_glances.text[2]) / 3, rtol=1e-6)
    np.testing.assert_allclose(profiles.text[2], tiny_glances.text[1], rtol=1e-6)

    # The beta-interval factor counts a history click as one peek and 1/p - 1 = 1 non-peek.
    normalised = build_user_profiles(events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(decay=False, meta_log_lift=False))
    assert dict(zip(columns, normalised.meta[0]))["category=a"] == pytest.approx(float(beta_interval_factor(3, 2)) * 2 / 3, rel=1e-6)
    assert dict(zip(columns, normalised.meta[2]))["category=b"] == pytest.approx(float(beta_interval_factor(1, 1)), rel=1e-6)


def test_history_clicks_left_out_of_meta_rates(tiny_glances, tiny_events):
    events = _with_history_clicks(tiny_events)
    config = UserEncoderConfig(normalize=False, decay=False, impute_history=False, meta_log_lift=False)
    profiles = build_user_profiles(events, tiny_glances, present_day=2, window_days=3, config=config)
    u1 = dict(zip(tiny_glances.vocabulary.columns, profiles.meta[0]))
    assert u1["category=b"] == 0.0
    assert u1["subcategory=x"] == pytest.approx(2 / 3)
    assert not profiles.meta[2].any()
    np.testing.assert_allclose(profiles.text[2], tiny_glances.text[1], rtol=1e-6)
    # Without the column every event counts as a logged impression.
    counted = build_user_profiles(events.drop(columns="logged"), tiny_glances, present_day=2, window_days=3, config=config)
    assert counted.impressions.tolist() == [4, 1, 1]
    assert dict(zip(tiny_glances.vocabulary.columns, counted.meta[2]))["category=b"] == pytest.approx(1.0)


def test_meta_log_lifts_worked_example(tiny_glances, tiny_events):
    config = UserEncoderConfig(normalize=False, decay=False, meta_prior_impressions=2.0)
    profiles = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3, config=config)
    assert profiles.options["meta_scale"] == "log_lift"
    columns = list(tiny_glances.vocabulary.columns)
    # Logged impressions with content: G1 (peeked), G2, G3 (peeked) of U1 and G2 of U3, so
    # p = 1/2. Population rates with one pseudo-impression at p: category a (2 of 2 peeked)
    # 2.5 / 3, category b (0 of 2) 0.5 / 3, subcategory x and format ar (2 of 4) 0.5, values
    # never shown p = 0.5, has_image (1 of 1) 1.5 / 2.
    r_a, r_b, r_x, r_image = 2.5 / 3, 0.5 / 3, 0.5, 0.75
    # U1 with m = 2 pseudo-impressions at r: category a 2 of 2, b 0 of 1, x 2 of 3, image 1 of 1.
    u1 = dict(zip(columns, profiles.meta[0]))
    assert u1["category=a"] == pytest.approx(math.log((2 + 2 * r_a) / 4 / r_a), rel=1e-5)
    assert u1["category=b"] == pytest.approx(math.log((2 * r_b) / 3 / r_b), rel=1e-5)
    assert u1["subcategory=x"] == pytest.approx(math.log((2 + 2 * r_x) / 5 / r_x), rel=1e-5)
    assert u1["has_image"] == pytest.approx(math.log((1 + 2 * r_image) / 3 / r_image), rel=1e-5)
    # Values U1 was never shown read as the population's rate: a lift of 0.
    assert u1["category=<unknown>"] == 0.0
    assert u1["subcategory=<unknown>"] == 0.0
    # U3 saw G2 once without a peek: below the population on b and x, 0 elsewhere.
    u3 = dict(zip(columns, profiles.meta[1]))
    assert u3["category=b"] == pytest.approx(math.log(2 / 3), rel=1e-5)
    assert u3["subcategory=x"] == pytest.approx(math.log((2 * r_x) / 3 / r_x), rel=1e-5)
    assert u3["category=a"] == 0.0

    # The beta-interval factor scales the lifts toward 0.
    normalised = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3, config=UserEncoderConfig(decay=False, meta_prior_impressions=2.0))
    np.testing.assert_allclose(normalised.meta[0], profiles.meta[0] * float(beta_interval_factor(2, 1)), rtol=1e-5)


def test_log_lifts_fallback_without_peeks(tiny_glances, tiny_events, caplog):
    never_peeked = tiny_events.assign(peek=0)
    with caplog.at_level("WARNING"):
        profiles = build_user_profiles(never_peeked, tiny_glances, present_day=2, window_days=3)
    assert profiles.options["meta_scale"] == "rate_fallback"
    assert "fall back to plain peek rates" in caplog.text
    assert not profiles.meta.any()


def test_meta_prior_must_be_positive():
    with pytest.raises(ValueError, match="meta_prior_impressions must be positive, got 0"):
        UserEncoderConfig(meta_prior_impressions=0.0)


def test_history_exposure_rejects_bad_counts(tiny_glances):
    with pytest.raises(ValueError, match="one impression and one peek count per glance"):
        HistoryExposure.from_counts(np.ones(2), np.ones(2), tiny_glances)
    assert HistoryExposure.from_counts(np.ones(3), np.zeros(3), tiny_glances) is None
    with pytest.raises(ValueError, match="peek_rate"):
        HistoryExposure(peek_rate=0.0, meta_mix=np.zeros(8))


def test_exposure_value_rates(tiny_glances):
    overall_only = HistoryExposure(peek_rate=0.25, meta_mix=np.zeros(8))
    np.testing.assert_allclose(overall_only.value_rates(8), np.full(8, 0.25))
    counted = HistoryExposure.from_counts(np.ones(3), np.array([1.0, 0.0, 0.0]), tiny_glances)
    with pytest.raises(ValueError, match="have 8 meta columns but the glances have 5"):
        counted.value_rates(5)


def test_profiles_rows_of(tiny_glances, tiny_events):
    profiles = build_user_profiles(tiny_events, tiny_glances, present_day=2, window_days=3)
    assert profiles.rows_of(["U3", "U2", "U1"]).tolist() == [1, -1, 0]


def test_profiles_reject_missing_columns(tiny_glances, tiny_events):
    with pytest.raises(ValueError, match="missing columns"):
        build_user_profiles(tiny_events.drop(columns="day"), tiny_glances, present_day=2, window_days=3)


@pytest.mark.slow
def test_profiles_on_sample(mind_data, text_encoder):
    from model.glance_encoder import encode_glances

    windows = resolve_windows(mind_data, WindowConfig())
    events = profile_events(mind_data, windows, days=windows.history)
    logged = set(events["glance_id"])
    table = GlanceTable(mind_data.glances.frame[mind_data.glances.frame["glance_id"].isin(logged)])
    glances = encode_glances(table, text_encoder=text_encoder)
    profiles = build_user_profiles(events, glances, present_day=windows.history[1], window_days=3)

    assert len(profiles) > 2_000
    for section in ("meta", "image", "text"):
        assert np.isfinite(getattr(profiles, section)).all()
    # Log lifts: negative for values peeked less than the population, at most log(1 / r).
    assert profiles.meta.min() < 0.0 < profiles.meta.max()
    assert profiles.meta.max() <= np.log(1.0 / 0.001)
    plain = build_user_profiles(events, glances, present_day=windows.history[1], window_days=3, config=PLAIN_RATES)
    assert plain.meta.min() >= 0.0
    assert plain.meta.max() <= 1.0
    assert np.linalg.norm(profiles.text, axis=1).max() <= 1.0 + 1e-5
    assert not profiles.image.any()
    assert (profiles.peeks <= profiles.impressions).all()
    # Users whose window holds only history clicks have no logged impression but a text profile.
    only_history = profiles.impressions == 0
    assert only_history.any()
    assert np.linalg.norm(profiles.text[only_history], axis=1).min() > 0.0
