"""L0's experiment state: the traffic split and glance statistics, reloaded from files, and their use.

``Experiments`` keeps the current ``TrafficSplit`` and ``GlanceStats``. Each is replaced by one
reference assignment, so a request that read them once sees one config and one statistics
version. Background tasks check the config file every ``reload_interval_s`` seconds (its
SHA-256) and the statistics every ``glance_stats.reload_interval_s`` seconds (the file that the
source names, by path, size and modification time). A file that fails to parse or validate is
logged with the reason, counted in ``fmlite_config_reloads_total{outcome="rejected"}`` and
shown in L0's health details; the previous version keeps serving.

``merge_combined`` builds one response from the base variants' responses of a combined variant,
and ``explore`` applies a bucket's exploration policy to a response. Without statistics (not
loaded yet, or unreadable at start) the policy is skipped and the request counted as skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.combine import Combination, combine_scores
from controller.explore import apply_policy
from controller.traffic import Bucket, TrafficConfigError, TrafficSplit, load_traffic
from fmlite.glance_stats import GlanceStats, GlanceStatsError, read_glance_stats, resolve_stats_path
from rpc.idl import fmlite_thrift

__all__ = ["ExperimentMetrics", "Experiments", "merge_combined"]

logger = logging.getLogger(__name__)

T = fmlite_thrift


class ExperimentMetrics:
    """Counters of combined variants, exploration and config reloads (labels carry no ids)."""

    def __init__(self, registry: CollectorRegistry):
        self.combined_requests = Counter(
            "fmlite_combined_requests", "Requests scored by a combined variant, per combined variant.", ["variant"], registry=registry
        )
        self.exploration_requests = Counter(
            "fmlite_exploration_requests",
            "Requests of buckets with an exploration policy, by outcome: explored (a position was moved up into the slate), "
            "unchanged, or skipped (no glance statistics loaded).",
            ["bucket", "outcome"],
            registry=registry,
        )
        self.explored_positions = Counter(
            "fmlite_explored_positions", "Positions flagged FLAG_EXPLORED, per bucket.", ["bucket"], registry=registry
        )
        self.reloads = Counter(
            "fmlite_config_reloads",
            "Reloads of the traffic config and of the glance statistics, by kind and outcome (loaded or rejected).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.stats_glances = Gauge("fmlite_glance_stats_glances", "Glances in the loaded glance statistics.", registry=registry)


def merge_combined(name: str, combination: Combination, responses: Mapping[str, Any]) -> Any:
    """Return the response of combined variant ``name`` from each base variant's response."""
    first = responses[combination.variants[0]]
    scores = combine_scores(combination, {variant: np.asarray(r.scores) for variant, r in responses.items()})
    flags = np.zeros(len(first.flags), dtype=np.uint8)
    for response in responses.values():
        flags |= np.frombuffer(response.flags, dtype=np.uint8)
    profile_versions = sorted({r.profile_version for r in responses.values()})
    return T.PredictResponse(
        scores=scores.tolist(),
        flags=flags.tobytes(),
        model_version=",".join(f"{variant}={responses[variant].model_version}" for variant in combination.variants),
        profile_version=",".join(profile_versions),
        variant=name,
        shard=first.shard,
        request_id=first.request_id,
        unknown_glances=int(np.count_nonzero(flags & T.FLAG_UNKNOWN_GLANCE)),
        cold_start_user=any(r.cold_start_user for r in responses.values()),
        variant_scores={variant: list(responses[variant].scores) for variant in combination.variants},
    )


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class Experiments:
    """The traffic split and glance statistics that L0 serves with, and their reload tasks."""

    def __init__(self, traffic: TrafficSplit, *, registry: CollectorRegistry):
        self.traffic = traffic
        self.metrics = ExperimentMetrics(registry)
        self.stats: GlanceStats | None = None
        self.traffic_error: str | None = None
        self.stats_error: str | None = None
        self._stats_signature: tuple[Path, tuple[int, int, int] | None] | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- reloading ------------------------------------------------------------------------

    def reload_traffic(self) -> bool:
        """Load the config file again when its bytes changed; return True when a new split was installed."""
        current = self.traffic
        if current.source is None:
            return False
        try:
            candidate = load_traffic(current.source)
        except TrafficConfigError as error:
            message = str(error)
            if message != self.traffic_error:
                logger.error("traffic config %s rejected, still serving version %s: %s", current.source, current.digest, message)
                self.metrics.reloads.labels(kind="traffic", outcome="rejected").inc()
            self.traffic_error = message
            return False
        self.traffic_error = None
        if candidate.digest == current.digest:
            return False
        self.traffic = candidate
        self.metrics.reloads.labels(kind="traffic", outcome="loaded").inc()
        logger.info(
            "traffic config %s reloaded: version %s (was %s), buckets %s",
            current.source, candidate.digest, current.digest, ", ".join(f"{b.name}={b.fraction:g}:{b.variant}" for b in candidate.buckets),
        )
        if candidate.glance_stats != current.glance_stats:
            self._stats_signature = None
        return True

    def reload_stats(self) -> bool:
        """Load the statistics that the config names when they changed; return True when new ones were installed."""
        source = self.traffic.glance_stats
        if source is None:
            return False
        try:
            path = resolve_stats_path(source.path)
            signature = (path, _file_signature(path))
            if signature == self._stats_signature:
                return False
            stats = read_glance_stats(path)
        except GlanceStatsError as error:
            message = str(error)
            if message != self.stats_error:
                kept = self.stats.version if self.stats is not None else "none"
                logger.error("glance statistics rejected, still using version %s: %s", kept, message)
                self.metrics.reloads.labels(kind="glance_stats", outcome="rejected").inc()
            self.stats_error = message
            return False
        self.stats_error = None
        self._stats_signature = signature
        previous = self.stats.version if self.stats is not None else "none"
        self.stats = stats
        self.metrics.reloads.labels(kind="glance_stats", outcome="loaded").inc()
        self.metrics.stats_glances.set(len(stats))
        logger.info("glance statistics %s loaded from %s: %d glances as of %d ms (was %s)", stats.version, path, len(stats), stats.as_of_ms, previous)
        return True

    async def _watch(self, kind: str) -> None:
        while True:
            traffic = self.traffic
            if kind == "traffic":
                interval = traffic.reload_interval_s
            else:
                interval = traffic.glance_stats.reload_interval_s if traffic.glance_stats is not None else 5.0
            await asyncio.sleep(interval if interval > 0 else 5.0)
            try:
                if kind == "traffic":
                    if self.traffic.reload_interval_s > 0 and self.reload_traffic() and self.traffic.glance_stats is not None:
                        await asyncio.to_thread(self.reload_stats)
                else:
                    await asyncio.to_thread(self.reload_stats)
            except Exception:  # the watcher must outlive any single failed reload
                logger.exception("reloading the %s failed; keeping the loaded version", kind)

    async def start(self) -> None:
        """Load the statistics once and start the reload tasks."""
        await asyncio.to_thread(self.reload_stats)
        if self.traffic.source is not None:
            self._tasks.append(asyncio.create_task(self._watch("traffic"), name="traffic-reload"))
        self._tasks.append(asyncio.create_task(self._watch("glance_stats"), name="glance-stats-reload"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def details(self) -> dict[str, str]:
        """Return the health details of the config and statistics versions and their last errors."""
        details = {"traffic_version": self.traffic.digest or "built-in"}
        if self.traffic_error:
            details["traffic_error"] = self.traffic_error[:300]
        if self.traffic.glance_stats is not None:
            details["glance_stats_version"] = self.stats.version if self.stats is not None else "none"
            if self.stats_error:
                details["glance_stats_error"] = self.stats_error[:300]
        return details

    # ---- per request ----------------------------------------------------------------------

    def explore(self, bucket: Bucket, *, glance_ids: list[str], response: Any, request_time_ms: int | None) -> Any:
        """Apply ``bucket``'s exploration policy to ``response`` in place and return it."""
        policy = bucket.explore
        if policy is None or not response.scores:
            return response
        stats = self.stats
        if stats is None:
            self.metrics.exploration_requests.labels(bucket=bucket.name, outcome="skipped").inc()
            return response
        now_ms = request_time_ms if request_time_ms is not None else int(time.time() * 1000)
        result = apply_policy(
            policy,
            scores=response.scores,
            glance_ids=glance_ids,
            stats=stats,
            now_ms=now_ms,
            request_id=response.request_id,
            salt=bucket.name,
        )
        flags = np.frombuffer(response.flags, dtype=np.uint8).copy()
        flags[result.explored] |= T.FLAG_EXPLORED
        count = result.explored_count
        response.scores_before_exploration = list(response.scores)
        response.scores = result.scores.tolist()
        response.flags = flags.tobytes()
        response.explored_positions = count
        response.request_time_ms = now_ms
        response.glance_stats_version = stats.version
        self.metrics.exploration_requests.labels(bucket=bucket.name, outcome="explored" if count else "unchanged").inc()
        if count:
            self.metrics.explored_positions.labels(bucket=bucket.name).inc(count)
        return response
