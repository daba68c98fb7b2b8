"""One measurement: a fixed offered load against one configuration, with its servers' CPU time.

The CPU time of every server process of the configuration is read when the first recorded
request is due and again when the last recorded request has finished. Predictions per
CPU-second are the recorded requests' scores divided by the sum of those differences. When
that sum is zero (every server used less than one clock tick, ``/proc``'s unit), the figure is
not measured: it reads ``None`` and the report prints "n/a", never a rate of 0 or infinity.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

from fmlite.launcher import ServerProcess
from fmlite.serve import install_event_loop
from loadtest.cluster import pid_pairs
from loadtest.cpu import TICKS_PER_SECOND, CpuSnapshot, snapshot_cpu
from loadtest.driver import LoadResult, LoadSpec, Target, run_load

__all__ = ["Measurement", "format_rate", "mean_chunk_size", "rounded_rate", "measure", "tier_of"]

logger = logging.getLogger(__name__)


def tier_of(role: str) -> str:
    """Return the tier of a server role such as ``p1-l1-0`` (l0, l1, leaf or rest)."""
    for tier in ("leaf", "l1", "l0", "rest"):
        if f"-{tier}" in f"-{role}":
            return tier
    return role


@dataclass(frozen=True)
class Measurement:
    """Client-side latency and server-side CPU of one configuration under one offered load."""

    name: str
    rate: float
    duration_s: float
    glances_per_request: int
    sent: int
    errors: Mapping[str, int]
    predictions: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    predictions_per_second: float
    # CPU seconds of each server process during the recorded window.
    cpu_seconds: Mapping[str, float] = field(default_factory=dict)
    # Mean glance ids per leaf call over the L1s' lifetime (their ``fmlite_chunk_size`` histogram).
    mean_chunk_size: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def total_cpu_seconds(self) -> float:
        return sum(self.cpu_seconds.values())

    @property
    def cpu_measured(self) -> bool:
        """Return False when the servers used less CPU than ``/proc`` can resolve (one clock tick)."""
        return self.total_cpu_seconds > 0

    @property
    def predictions_per_cpu_second(self) -> float | None:
        """Return predictions per CPU-second, or None when the CPU time was below one clock tick."""
        if not self.cpu_measured:
            return None
        return self.predictions / self.total_cpu_seconds

    def cpu_by_tier(self) -> dict[str, float]:
        """Return CPU seconds summed per tier."""
        tiers: dict[str, float] = {}
        for role, seconds in self.cpu_seconds.items():
            tiers[tier_of(role)] = tiers.get(tier_of(role), 0.0) + seconds
        return tiers

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-ready dict."""
        return {
            "predictions_per_cpu_second": rounded_rate(self.predictions_per_cpu_second),
            "cpu_measured": self.cpu_measured,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "requests": self.sent,
            "offered_requests_per_second": self.rate,
            "glances_per_request": self.glances_per_request,
            "predictions": self.predictions,
            "predictions_per_second": round(self.predictions_per_second, 1),
            "cpu_seconds": round(self.total_cpu_seconds, 3),
            "cpu_seconds_by_tier": {tier: round(seconds, 3) for tier, seconds in self.cpu_by_tier().items()},
            "mean_chunk_size": round(self.mean_chunk_size, 1) if self.mean_chunk_size is not None else None,
        }


def rounded_rate(value: float | None) -> float | None:
    """Return a rate rounded to 0.1 for JSON, keeping None (not measured) as None."""
    return round(value, 1) if value is not None else None


def format_rate(value: float | None) -> str:
    """Return a predictions-per-CPU-second figure for a table: ``12,345``, or ``n/a`` when not measured."""
    return f"{value:,.0f}" if value is not None else "n/a"


def mean_chunk_size(l1s: Sequence[ServerProcess]) -> float | None:
    """Return the mean chunk size the L1s sent, read from their Prometheus ``fmlite_chunk_size`` histograms."""
    total = count = 0.0
    for server in l1s:
        try:
            with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5.0) as response:
                text = response.read().decode()
        except OSError as error:
            logger.warning("could not read the metrics of %s: %s", server.role, error)
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fmlite_chunk_size_sum":
                    total += sample.value
                elif sample.name == "fmlite_chunk_size_count":
                    count += sample.value
    return total / count if count else None


def measure(name: str, target: Target, spec: LoadSpec, servers: Sequence[ServerProcess], *, glances_per_request: int) -> Measurement:
    """Offer ``spec``'s load to ``target`` and return its figures with the CPU time of ``servers``."""
    pids = pid_pairs(servers)
    marks: dict[str, CpuSnapshot] = {}

    def window_start() -> None:
        marks["start"] = snapshot_cpu(pids)

    def window_end() -> None:
        marks["end"] = snapshot_cpu(pids)

    install_event_loop()
    result: LoadResult = asyncio.run(run_load(target, spec, on_window_start=window_start, on_window_end=window_end))
    cpu = marks["end"].minus(marks["start"])
    measurement = Measurement(
        name=name,
        rate=spec.rate,
        duration_s=spec.duration_s,
        glances_per_request=glances_per_request,
        sent=result.sent,
        errors=dict(result.errors),
        predictions=result.predictions,
        p50_ms=result.percentile_ms(50),
        p99_ms=result.percentile_ms(99),
        max_ms=result.max_ms,
        predictions_per_second=result.predictions_per_second,
        cpu_seconds=cpu,
    )
    logger.info(
        "%s at %.1f req/s: %d requests, %d errors, p50 %.1f ms, p99 %.1f ms, %s predictions per CPU-second",
        name, spec.rate, measurement.sent, measurement.error_count, measurement.p50_ms, measurement.p99_ms,
        format_rate(measurement.predictions_per_cpu_second),
    )
    if not measurement.cpu_measured:
        logger.warning(
            "%s: the servers used less than one clock tick of CPU (%.3f s) during %d requests, so predictions per "
            "CPU-second are not measured; offer more requests", name, 1.0 / TICKS_PER_SECOND, measurement.sent,
        )
    return measurement
