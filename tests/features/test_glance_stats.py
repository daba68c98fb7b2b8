"""Glance statistics files and L0's reloading of them and of the traffic config (no servers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from controller.experiments import Experiments
from controller.traffic import load_traffic
from fmlite.glance_stats import STATS_FILE, GlanceStatsError, build_glance_stats, read_glance_stats, resolve_stats_path, write_glance_stats

HOUR_MS = 3_600_000


def sample_stats(version="v1", as_of_ms=10 * HOUR_MS):
    return build_glance_stats(
        ["a", "a", "b", "a", "c"],
        [1 * HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS, 4 * HOUR_MS, 11 * HOUR_MS],
        [1, 0, 1, 0, 1],
        as_of_ms=as_of_ms,
        version=version,
        known_ids=["d"],
    )


def test_build_counts_up_to_as_of():
    stats = sample_stats()
    assert stats.ids.tolist() == ["a", "b", "d"]
    assert stats.impressions.tolist() == [3, 1, 0]
    assert stats.peeks.tolist() == [1, 1, 0]
    assert stats.first_seen_ms.tolist() == [HOUR_MS, 3 * HOUR_MS, 10 * HOUR_MS]
    np.testing.assert_allclose(stats.ages_hours(["a", "d", "c"], now_ms=12 * HOUR_MS), [11.0, 2.0, 0.0])
    assert stats.prior_peek_rate == pytest.approx(0.5)


def test_round_trip_and_bad_files(tmp_path):
    path = write_glance_stats(tmp_path / STATS_FILE, sample_stats())
    loaded = read_glance_stats(path)
    assert loaded.version == "v1"
    assert loaded.counts(["b", "zzz"])[0].tolist() == [1, 0]

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(GlanceStatsError, match="not a readable .npz file"):
        read_glance_stats(tmp_path / "bad.npz")
    with pytest.raises(GlanceStatsError, match="not found"):
        read_glance_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", ids=np.array(["a"]))
    with pytest.raises(GlanceStatsError, match="lack the arrays"):
        read_glance_stats(tmp_path / "partial.npz")


def test_peeks_above_impressions_rejected(tmp_path):
    stats = sample_stats()
    broken = type(stats)(
        version="x", as_of_ms=stats.as_of_ms, ids=stats.ids, first_seen_ms=stats.first_seen_ms,
        impressions=stats.impressions, peeks=stats.impressions + 1,
    )
    with pytest.raises(GlanceStatsError, match="peeks exceed impressions"):
        write_glance_stats(tmp_path / "x.npz", broken)


def test_snapshot_root_follows_current(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "CURRENT").write_text("7\n")
    assert resolve_stats_path(tmp_path) == tmp_path / "7" / STATS_FILE
    (tmp_path / "CURRENT").write_text("seven")
    with pytest.raises(GlanceStatsError, match="must hold a version number"):
        resolve_stats_path(tmp_path)


def traffic_file(tmp_path, **changes):
    raw = {
        "variants": {"fmlite": {}, "cosine": {}},
        "glance_stats": {"path": "stats.npz", "reload_interval_s": 1},
        "buckets": [{"name": "b", "fraction": 1.0, "variant": "fmlite", "explore": {"policy": "thompson"}}],
        **changes,
    }
    path = tmp_path / "traffic.json"
    path.write_text(json.dumps(raw))
    return path


def test_reload_keeps_serving_on_bad_files(tmp_path):
    path = traffic_file(tmp_path)
    experiments = Experiments(load_traffic(path), registry=CollectorRegistry())
    assert not experiments.reload_stats()
    assert "not found" in experiments.details()["glance_stats_error"]

    write_glance_stats(tmp_path / "stats.npz", sample_stats("v1"))
    assert experiments.reload_stats()
    assert experiments.details()["glance_stats_version"] == "v1"
    assert not experiments.reload_stats()

    (tmp_path / "stats.npz").write_bytes(b"garbage")
    assert not experiments.reload_stats()
    assert experiments.stats.version == "v1"
    assert "glance_stats_error" in experiments.details()

    first = experiments.traffic.digest
    traffic_file(tmp_path, buckets=[{"name": "b", "fraction": 0.5, "variant": "fmlite"}])
    assert not experiments.reload_traffic()
    assert experiments.traffic.digest == first
    assert "bucket fractions sum to 0.500000" in experiments.details()["traffic_error"]

    traffic_file(tmp_path, buckets=[{"name": "c", "fraction": 1.0, "variant": "cosine"}])
    assert experiments.reload_traffic()
    assert experiments.traffic.variant_for("anyone") == "cosine"
    assert "traffic_error" not in experiments.details()


def test_trained_snapshot_gets_statistics_of_the_log(trained_artifacts, sample_dir, tmp_path):
    import shutil

    from fmlite import snapshot
    from fmlite.release import write_training_stats
    from fmlite.release_eval import load_held_out_day

    root = trained_artifacts.out_dir / "profiles"
    version = snapshot.current_version(root)
    copy = tmp_path / str(version)
    shutil.copytree(root / str(version), copy)
    path = write_training_stats(sample_dir, copy, version=version)
    stats = read_glance_stats(path)

    day, source = load_held_out_day(sample_dir)
    frame = source.interactions.frame
    before = frame[frame["timestamp"].to_numpy(dtype="datetime64[ms]").astype(np.int64) < day.first_ms]
    assert path == copy / STATS_FILE
    assert stats.version == str(version)
    assert stats.as_of_ms == day.first_ms
    assert set(snapshot.load_glances(copy, verify=False).ids.tolist()) <= set(stats.ids.tolist())
    assert int(stats.impressions.sum()) == len(before)
    assert int(stats.peeks.sum()) == int((before["peek"] > 0).sum())
