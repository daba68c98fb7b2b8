"""Prometheus metrics of the L0 router and the L1 shard controllers (no per-id labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControllerMetrics", "CALL_KINDS"]

# Kinds of calls to the next tier: the first call of a chunk or request, a retry after a
# failure, a hedge sent while the first call is still pending, and a re-send to pin versions.
CALL_KINDS = ("primary", "retry", "hedge", "version")


class ControllerMetrics:
    """Counters and histograms of one controller tier ("l0" or "l1")."""

    def __init__(self, registry: CollectorRegistry, *, tier: str):
        self.tier = tier
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

        calls = Counter(
            "fmlite_downstream_calls",
            "Calls sent to the next tier, by kind: primary, retry, hedge or version (re-sent to pin versions).",
            ["tier", "kind"],
            registry=registry,
        )
        self.calls = {kind: calls.labels(tier=tier, kind=kind) for kind in CALL_KINDS}
        self.hedge_wins = Counter(
            "fmlite_hedge_wins", "Hedged chunks whose hedge answered before the first call.", ["tier"], registry=registry
        ).labels(**labels)
        self.hedges_denied = Counter(
            "fmlite_hedges_denied", "Hedges not sent because the hedge budget was spent.", ["tier"], registry=registry
        ).labels(**labels)
        self.mixed_versions = Counter(
            "fmlite_mixed_version_requests",
            "Requests whose chunks came back from different model or profile versions and were re-sent.",
            ["tier"],
            registry=registry,
        ).labels(**labels)

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
            "Requests or chunks dropped because their deadline had passed (not sent, or abandoned in flight).",
            ["tier"],
            registry=registry,
        ).labels(**labels)

        self.replica_ejections = Counter(
            "fmlite_replica_ejections", "Replicas ejected for failed calls or health checks.", ["tier"], registry=registry
        ).labels(**labels)
        self.replica_readmissions = Counter(
            "fmlite_replica_readmissions", "Ejected replicas re-admitted after passing health checks.", ["tier"], registry=registry
        ).labels(**labels)
        self._replicas_ejected = Gauge(
            "fmlite_replicas_ejected", "Replicas currently ejected, per replica set.", ["tier", "replicas"], registry=registry
        )
        self.fail_open_choices = Counter(
            "fmlite_fail_open_choices",
            "Calls sent to an ejected replica because every replica of the set was ejected.",
            ["tier"],
            registry=registry,
        ).labels(**labels)

    def set_ejected(self, replica_set: str, count: int) -> None:
        self._replicas_ejected.labels(tier=self.tier, replicas=replica_set).set(count)
