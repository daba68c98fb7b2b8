"""Prometheus metrics of the L0 router and the L1 shard controllers (no per-id labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ControllerMetrics"]


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry, *, tier: str):
        labels = {"tier": tier}
        self.predictions = Counter(
            "fmlite_predictions", "Glance positions scored and returned.", ["tier"], registry=registry
        ).labels(**labels)
        self.chunk_size = Histogram(
            "fmlite_chunk_size",
            "Glance ids per chunk sent to a leaf.",
            ["tier"],
            buckets=(10, 25, 50, 100, 200, 400, 1000, 2500, 10000),
            registry=registry,
        ).labels(**labels)
        self.retries = Counter(
            "fmlite_chunk_retries", "Chunks or requests sent again to another replica.", ["tier"], registry=registry
        ).labels(**labels)
        self.timeouts = Counter(
            "fmlite_chunk_timeouts", "Calls to the next tier that timed out.", ["tier"], registry=registry
        ).labels(**labels)
        self.failures = Counter(
            "fmlite_downstream_failures",
            "Calls to the next tier that failed, by kind.",
            ["tier", "kind"],
            registry=registry,
        )
        self.unknown_glances = Counter(
            "fmlite_unknown_glances", "Positions flagged as unknown glances.", ["tier"], registry=registry
        ).labels(**labels)
        self.cold_start_users = Counter(
            "fmlite_cold_start_users", "Requests whose user was flagged cold start.", ["tier"], registry=registry
        ).labels(**labels)
        self.variant_requests = Counter(
            "fmlite_variant_requests", "Requests routed per model variant.", ["tier", "variant"], registry=registry
        )
        self.deadline_dropped = Counter(
            "fmlite_deadline_dropped",
            "Requests or chunks dropped because their deadline had passed.",
            ["tier"],
            registry=registry,
        ).labels(**labels)
