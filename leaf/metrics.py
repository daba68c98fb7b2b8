"""Prometheus metrics of a leaf. Labels never carry user or glance ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LeafMetrics", "USER_SIDE_CACHE_COUNTS", "UserSideCacheCounts"]


@dataclass
class UserSideCacheCounts:
    """Lookups of the NumPy runner's cache of reduced user vectors since the process started."""

    hits: int = 0
    misses: int = 0


# One per process: runners are built by the reloader, which has no access to the metrics, and
# a leaf is one process. Several leaves in one process (tests) share these counts.
USER_SIDE_CACHE_COUNTS = UserSideCacheCounts()


class _UserSideCacheCollector(Collector):
    def __init__(self, tier: str):
        self.tier = tier

    def collect(self) -> Iterator[CounterMetricFamily]:
        hits = CounterMetricFamily(
            "fmlite_user_side_cache_hits", "Chunks scored with reduced user vectors taken from the NumPy runner's cache.", labels=["tier"]
        )
        hits.add_metric([self.tier], USER_SIDE_CACHE_COUNTS.hits)
        misses = CounterMetricFamily(
            "fmlite_user_side_cache_misses", "Chunks whose reduced user vectors the NumPy runner computed and cached.", labels=["tier"]
        )
        misses.add_metric([self.tier], USER_SIDE_CACHE_COUNTS.misses)
        return iter((hits, misses))


class LeafMetrics:
    """Every metric a leaf exports, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, tier: str = "leaf"):
        self.tier = tier
        self.predictions = Counter("fmlite_predictions", "Glance positions scored and returned.", ["tier"], registry=registry).labels(tier=tier)
        self.unknown_glances = Counter(
            "fmlite_unknown_glances", "Positions flagged as unknown glances (fallback score).", ["tier"], registry=registry
        ).labels(tier=tier)
        self.cold_start_users = Counter(
            "fmlite_cold_start_users", "Requests scored with the cold-start profile.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.outage_cold_starts = Counter(
            "fmlite_store_outage_cold_starts",
            "Requests scored with the cold-start profile because the user was not cached and the profile store was unavailable.",
            ["tier"],
            registry=registry,
        ).labels(tier=tier)
        self.deadline_dropped = Counter(
            "fmlite_deadline_dropped", "Requests dropped unscored because their deadline had passed.", ["tier"], registry=registry
        ).labels(tier=tier)

        self.rejected_profile_rows = Gauge(
            "fmlite_rejected_profile_rows", "Snapshot rows rejected at load for NaN or inf.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.score_seconds = Histogram(
            "fmlite_leaf_score_seconds",
            "Time spent in the model runner per chunk.",
            ["tier", "variant"],
            buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=registry,
        )

        self.model_version = Gauge(
            "fmlite_model_version_info", "Loaded model version per variant (value 1).", ["tier", "variant", "version"], registry=registry
        )
        self.model_version_number = Gauge(
            "fmlite_model_version", "Loaded model version per variant, as a number (0 for built-in models).", ["tier", "variant"], registry=registry
        )
        self.profile_version = Gauge(
            "fmlite_profile_version_info", "Loaded profile snapshot version (value 1).", ["tier", "version"], registry=registry
        )
        self.profile_version_number = Gauge(
            "fmlite_profile_version", "Loaded profile snapshot version, as a number.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.profile_load_seconds = Gauge(
            "fmlite_profile_load_seconds", "Time the last profile snapshot took to load.", ["tier"], registry=registry
        ).labels(tier=tier)

        self.reloads = Counter(
            "fmlite_leaf_reloads",
            "New model or profile versions seen by the reloader, by outcome (switched or rejected).",
            ["tier", "kind", "outcome"],
            registry=registry,
        )
        self.reload_seconds = Histogram(
            "fmlite_leaf_reload_seconds",
            "Time from seeing a new version to switching to it (load, warm-up and check).",
            ["tier", "kind"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )

        self.cache_hits = Counter(
            "fmlite_profile_cache_hits", "User lookups answered from the leaf's memory.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.cache_misses = Counter(
            "fmlite_profile_cache_misses", "User lookups that had to ask the profile store.", ["tier"], registry=registry
        ).labels(tier=tier)
        self.cached_users = Gauge(
            "fmlite_profile_cached_users", "Users held in the leaf's memory for the loaded profile version.", ["tier"], registry=registry
        ).labels(tier=tier)

        self.store_errors = Counter(
            "fmlite_profile_store_errors",
            "Profile store calls that failed or timed out, by operation.",
            ["tier", "operation"],
            registry=registry,
        )
        registry.register(_UserSideCacheCollector(tier))

        self.store_available = Gauge(
            "fmlite_profile_store_available", "1 while the profile store answers (always 1 for file snapshots).", ["tier"], registry=registry
        ).labels(tier=tier)
