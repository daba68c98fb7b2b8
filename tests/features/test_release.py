"""``fmlite release`` and ``fmlite rollback`` against a local platform of real processes on loopback.

The tests of this module run in file order on the feature platform's artifact root: a worse
candidate is rejected, a trained one is published and served, then rolled back.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np

from feature_setup import SHARDS, run_fmlite, wait_until, worse_candidate
from fmlite import snapshot
from fmlite.glance_stats import STATS_FILE, read_glance_stats
from fmlite.release import EXIT_REJECTED, PlatformTarget, ReleaseConfig, release
from fmlite.release_eval import load_held_out_day
from fmlite.release_wait import leaf_statuses
from rpc.client import ThriftHttpClient
from rpc.idl import fmlite_thrift as T


def served_versions(feature_platform):
    return {(status.model_version, status.profile_version) for status in leaf_statuses(feature_platform.leaves)}


def call(address, method, **arguments):
    async def run():
        client = ThriftHttpClient(address)
        try:
            if method == "health":
                return await client.health(timeout_s=5)
            return await client.predict(T.PredictRequest(timeout_ms=8000, **arguments), timeout_s=10)
        finally:
            await client.close()

    return asyncio.run(run())


def test_unreachable_l0_fails_before_training(feature_platform, sample_dir, tmp_path):
    root = feature_platform.root
    result = run_fmlite("release", "--root", str(root), "--data", str(sample_dir), "--l0", "127.0.0.1:1", timeout_s=120)
    assert result.code == 1, result.output
    assert "health call to L0 at 127.0.0.1:1 failed" in result.output
    assert not any(path.name.startswith(".release-") for path in root.iterdir())


def test_missing_candidate_is_an_error(feature_platform, sample_dir, tmp_path):
    root = feature_platform.root
    result = run_fmlite("release", "--root", str(root), "--data", str(sample_dir), "--candidate", str(tmp_path / "none"), "--no-wait")
    assert result.code == 1, result.output
    assert "must hold models/fmlite/<version>/ and profiles/<version>/" in result.output


def test_rollback_without_earlier_release_fails(feature_platform):
    root, model, profile = feature_platform.root, feature_platform.model_version, feature_platform.profile_version
    result = run_fmlite("rollback", "--root", str(root), "--no-wait", timeout_s=120)
    assert result.code == 1, result.output
    assert "no earlier release to roll back to" in result.output
    assert snapshot.current_version(root / "profiles") == profile


def test_worse_candidate_is_rejected(feature_platform, sample_dir, tmp_path):
    root, model, profile = feature_platform.root, feature_platform.model_version, feature_platform.profile_version
    day, _ = load_held_out_day(sample_dir)
    candidate = tmp_path / "candidate"
    worse_candidate(root, candidate, model + 1, set(day.glance_ids[day.labels == 1].tolist()))

    lines: list[str] = []
    config = ReleaseConfig(root=root, data=sample_dir, candidate=candidate, tolerance=0.01, target=PlatformTarget(leaves=tuple(feature_platform.leaves)))

    code = release(config, out=lines.append)

    output = "\n".join(lines)
    assert code == EXIT_REJECTED, output
    assert "rejected: the candidate's map@50" in output
    assert "map@50 candidate - served" in output
    report = json.loads((root / "reports" / f"release-{model + 1}.json").read_text())
    assert report["outcome"] == "rejected"
    gate = report["gate"]
    assert gate["candidate"]["metrics"]["map@50"]["value"] < gate["served"]["metrics"]["map@50"]["value"] - 0.01
    assert snapshot.current_version(root / "profiles") == profile
    assert sorted(int(p.name) for p in (root / "models" / "fmlite").iterdir() if p.name.isdigit()) == [model]
    assert served_versions(feature_platform) == {(str(model), str(profile))}


def test_release_trains_publishes_and_waits(feature_platform, sample_dir, text_cache_dir):
    root, model, profile = feature_platform.root, feature_platform.model_version, feature_platform.profile_version
    result = run_fmlite(
        "release", "--root", str(root), "--data", str(sample_dir),
        "--epochs", "1", "--glance-scope", "logged", "--text-cache", str(text_cache_dir), "--wait-timeout-s", "180",
    )

    assert result.code == 0, result.output
    assert f"served now: model {model} with profiles {profile}" in result.output
    assert f"platform: {SHARDS} leaves" in result.output
    assert f"{SHARDS}/{SHARDS} leaves serve them" in result.output
    new = snapshot.current_version(root / "profiles")
    assert new > model
    assert (root / "models" / "fmlite" / str(new) / "saved_model.pb").exists()
    assert not any(path.name.startswith(".release-") for path in root.iterdir())
    assert served_versions(feature_platform) == {(str(new), str(new))}

    stats = read_glance_stats(root / "profiles" / str(new) / STATS_FILE)
    assert stats.version == str(new)
    assert len(stats) > 0
    assert stats.impressions.sum() > 0

    history = json.loads((root / "releases.json").read_text())["releases"]
    assert [(r["model_version"], r["status"]) for r in history] == [(model, "found"), (new, "published")]
    assert history[1]["gate"]["accepted"] is True

    user = str(snapshot.load_users(root / "profiles" / str(new), 0).ids[0])
    glances = [str(g) for g in snapshot.load_glances(root / "profiles" / str(new)).ids[:5]]
    response = call(feature_platform.platform.l0_address, "predict", user_id=user, glance_ids=glances, variant="fmlite")
    assert response.model_version == str(new)
    assert response.profile_version == str(new)
    assert np.all(np.isfinite(response.scores))
    # L0 follows profiles/CURRENT to the glance statistics written by the release.
    wait_until(
        lambda: call(feature_platform.platform.l0_address, "health").details.get("glance_stats_version") == str(new),
        message="L0 loads the released glance statistics",
    )


def test_rollback_serves_previous_version(feature_platform):
    root, model, profile = feature_platform.root, feature_platform.model_version, feature_platform.profile_version
    released = snapshot.current_version(root / "profiles")
    assert released != profile, "the release test must run first"

    result = run_fmlite("rollback", "--root", str(root), "--wait-timeout-s", "120", timeout_s=200)

    assert result.code == 0, result.output
    assert f"rolling back from model {released} with profiles {released} to model {model} with profiles {profile}" in result.output
    assert f"{SHARDS}/{SHARDS} leaves serve them" in result.output
    assert snapshot.current_version(root / "profiles") == profile
    assert (root / "models" / "fmlite" / f".retired-{released}" / "saved_model.pb").exists()
    assert not (root / "models" / "fmlite" / str(released)).exists()
    assert served_versions(feature_platform) == {(str(model), str(profile))}
    history = json.loads((root / "releases.json").read_text())["releases"]
    assert [r["status"] for r in history] == ["found", "rolled_back"]

    again = run_fmlite("rollback", "--root", str(root), "--no-wait", timeout_s=120)
    assert again.code == 1, again.output
    assert "no earlier release to roll back to" in again.output
