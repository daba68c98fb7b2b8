"""Prometheus metrics of the Thrift server, one registry per process.

Labels never carry user or glance ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["LATENCY_BUCKETS", "RpcMetrics"]

# Seconds; fine below 100 ms, where the latency targets are.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class RpcMetrics:
    """Request latency by method and outcome, malformed calls and expired calls, for one tier."""

    def __init__(self, registry: CollectorRegistry, *, tier: str):
        self.tier = tier
        self.request_seconds = Histogram(
            "fmlite_request_seconds",
            "Server-side latency of Thrift calls.",
            ["tier", "method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.malformed = Counter(
            "fmlite_malformed_calls",
            "Calls rejected before dispatch because the body was not a valid Thrift call.",
            ["tier"],
            registry=registry,
        ).labels(tier=tier)
        self.expired = Counter(
            "fmlite_expired_calls",
            "Predict calls whose timeout_ms ran out while the server read them; answered with DeadlineExceeded, not computed.",
            ["tier"],
            registry=registry,
        ).labels(tier=tier)

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        self.request_seconds.labels(tier=self.tier, method=method, outcome=outcome).observe(seconds)
