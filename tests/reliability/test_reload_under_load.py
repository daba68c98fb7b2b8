"""A new model version and a new profile version published under load: zero errors, no mixed versions."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
from load_driver import RequestTemplate, run_load
from reliability_setup import DEADLINE_MS, GLANCES_PER_REQUEST, health
from server_processes import metric_total
from store_platform import StorePlatform, expected_scores, publish_to_redis

RATE = 20.0
MODEL_AT_S = 1.5
PROFILES_AT_S = 2.5
# A leaf prepares a new model version in 2-8 s on a busy 2-core machine (weights, warm-up
# replay) and the profile version after that, so the load lasts until both have switched.
DURATION_S = 16.0
# Scores of the NumPy runner match the SavedModel's within 1e-5; versions differ by far more.
SCORE_TOLERANCE = 1e-4


def test_new_versions_under_load(store_platform: StorePlatform, templates, figure_book):
    platform = store_platform
    # The new model is still in its staging directory; it moves into the base during the load.
    model_dirs = {platform.old_model: platform.models / platform.old_model, platform.new_model: platform.staged_model}
    expected = {
        (model, profile): expected_scores(model_dir, platform.profiles_root / profile, templates)
        for model, model_dir in model_dirs.items()
        for profile in (platform.old_profiles, platform.new_profiles)
    }
    seen: dict[tuple[str, str], int] = {}

    def check(template: RequestTemplate, response) -> str:
        version = (response.model_version, response.profile_version)
        if version not in expected:
            return f"unknown version pair {version}"
        seen[version] = seen.get(version, 0) + 1
        difference = np.max(np.abs(np.asarray(response.scores) - expected[version][template.user_id]))
        return "ok" if difference <= SCORE_TOLERANCE else f"scores differ from version {version} by {difference:.3g}: mixed versions"

    publishing = threading.Thread(target=publish_to_redis, args=(platform.redis.url, platform.profiles_root), kwargs={"version": int(platform.new_profiles)})
    unchecked = [RequestTemplate(t.user_id, t.glance_ids, None) for t in templates]
    result = asyncio.run(run_load(
        platform.l1.address, unchecked, rate_per_s=RATE, duration_s=DURATION_S, timeout_ms=DEADLINE_MS, check=check,
        description=f"{RATE:.0f} req/s open loop via L1 over two hot-reloading leaves that read Redis, {GLANCES_PER_REQUEST} ids "
        f"per request, deadline {DEADLINE_MS} ms; new model version after {MODEL_AT_S:g} s, new profile version published "
        f"to Redis after {PROFILES_AT_S:g} s",
        events=[
            (MODEL_AT_S, lambda: os.rename(platform.staged_model, platform.models / platform.new_model)),
            (PROFILES_AT_S, publishing.start),
        ],
    ))
    publishing.join(timeout=60)

    final = (platform.new_model, platform.new_profiles)
    assert result.failed == 0, f"{result.failed} of {result.sent} requests failed: {result.errors()}"
    assert result.latency_ms(99) < DEADLINE_MS
    assert seen.get(final, 0) > 0, f"no response came from the new versions during the load: {seen}"
    for leaf in platform.leaves:
        status = health(leaf.address)
        assert (status.model_version, status.profile_version) == final, f"{leaf.role} did not switch: {status}"
    l1_metrics = platform.l1.metrics()
    figure_book.add(
        "new model and profile versions under load", **result.summary(),
        responses_per_version={f"model {m} / profiles {p}": n for (m, p), n in sorted(seen.items())},
        requests_with_mixed_chunks=int(metric_total(l1_metrics, "fmlite_mixed_version_requests_total")),
        chunks_resent_for_versions=int(metric_total(l1_metrics, "fmlite_downstream_calls_total", kind="version")),
        note="Every response's scores equal those of the one (model, profiles) pair it names, recomputed with the "
        "SavedModel in the test process. Chunks that came back at another version than the rest were re-sent to a "
        "leaf at the version most chunks carried.",
    )
