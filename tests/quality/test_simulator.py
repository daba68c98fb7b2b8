"""The simulator writes a MIND dataset the reader accepts, calibrated to the sample and seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.mind import read_mind
from model.simulate import SUMMARY_FILE, SimulationConfig, SimulationError, simulate
from model.simulator_truth import TRUTH_FILE, HiddenPreferences
from tests.quality.conftest import small_simulation_config


def test_files_read_back(small_simulation):
    out = small_simulation.out
    for name in ("behaviors.tsv", "news.tsv", "doc_type.json", TRUTH_FILE, SUMMARY_FILE):
        assert (out / name).is_file(), name
    data = read_mind(out)
    assert len(data.interactions) == small_simulation.statistics.impressions
    assert data.interactions.frame["impression_id"].nunique() == small_simulation.statistics.rows


def test_every_row_has_a_click(small_simulation):
    frame = read_mind(small_simulation.out).interactions.frame
    clicks = frame.groupby("impression_id")["peek"].sum()
    assert int(clicks.min()) >= 1


def test_glances_are_renumbered_real_rows(small_simulation, sample_dir):
    from model.mind import read_news

    simulated = read_mind(small_simulation.out).glances.frame
    real = read_news([sample_dir / "news.tsv", sample_dir / "news-extra.tsv"]).frame
    assert simulated["glance_id"].tolist()[:3] == ["N1", "N2", "N3"]
    real_titles = set(real["title"])
    assert set(simulated["title"]) <= real_titles
    # Formats come back through doc_type.json keyed by the synthetic URL key.
    assert simulated["format"].notna().mean() > 0.9


def test_glances_live_at_most_48_hours(small_simulation):
    frame = read_mind(small_simulation.out).interactions.frame
    spans = frame.groupby("glance_id")["timestamp"].agg(lambda times: times.max() - times.min())
    # Candidates are drawn at the start of the session's hour, so a span can exceed the
    # lifetime by less than one hour.
    assert spans.max() < pd.Timedelta(hours=49)


def test_calibration_near_sample(small_simulation):
    simulated = small_simulation.statistics
    sample = small_simulation.sample_statistics
    assert simulated.click_rate == pytest.approx(sample.click_rate, rel=0.15)
    assert np.median(simulated.candidates) == pytest.approx(np.median(sample.candidates), rel=0.35)
    assert np.median(simulated.history_lengths) == pytest.approx(np.median(sample.history_lengths), rel=0.35)
    figures = [row[0] for row in small_simulation.calibration]
    assert "click rate" in figures
    assert "candidates per row" in figures


def test_summary_lists_calibration(small_simulation):
    summary = json.loads((small_simulation.out / SUMMARY_FILE).read_text())
    assert summary["counts"]["users"] == 400
    assert summary["calibration"][0]["figure"] == "users"
    assert "click rate" in small_simulation.render()


def test_truth_explains_clicks(small_simulation):
    truth, user_ids, glance_ids = HiddenPreferences.load(small_simulation.out / TRUTH_FILE)
    frame = read_mind(small_simulation.out).interactions.frame
    users = pd.Index(user_ids).get_indexer(frame["user_id"])
    glances = pd.Index(glance_ids).get_indexer(frame["glance_id"])
    assert (users >= 0).all()
    assert (glances >= 0).all()
    probability = truth.probabilities(users, glances)
    peeks = frame["peek"].to_numpy()
    # Peeked candidates have a higher true probability than the others.
    assert probability[peeks == 1].mean() > 1.5 * probability[peeks == 0].mean()


def test_same_seed_same_files(small_simulation, sample_dir, tmp_path):
    again = simulate(small_simulation_config(sample_dir), tmp_path / "again")
    assert (again.out / "behaviors.tsv").read_bytes() == (small_simulation.out / "behaviors.tsv").read_bytes()
    assert (again.out / "news.tsv").read_bytes() == (small_simulation.out / "news.tsv").read_bytes()


def test_other_seed_other_files(small_simulation, sample_dir, tmp_path):
    other = simulate(small_simulation_config(sample_dir, seed=12, users=100), tmp_path / "other")
    assert (other.out / "behaviors.tsv").read_bytes() != (small_simulation.out / "behaviors.tsv").read_bytes()


@pytest.mark.parametrize(
    ("field", "value"),
    [("users", 0), ("days", 0), ("lifetime_hours", 0.0), ("sessions_per_user_day", -1.0), ("content_limit", 1)],
)
def test_invalid_settings_rejected(sample_dir, field, value):
    with pytest.raises(SimulationError, match=field):
        SimulationConfig(sample_dir=sample_dir, **{field: value})


def test_missing_sample_rejected(tmp_path):
    from model.mind import MindFormatError

    with pytest.raises(MindFormatError, match="not found"):
        simulate(SimulationConfig(sample_dir=tmp_path / "absent", users=10), tmp_path / "out")
