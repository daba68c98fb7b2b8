"""Chunk size of an L1 that grows while requests' leaf calls finish well inside a target time.

L1 sends a request's chunks in parallel, so a request waits for its slowest chunk call, and
chunks that land on the same leaf are served one after the other. Every leaf call also pays a
fixed cost (HTTP on both ends, decoding, the leaf's per-call work), so fewer, larger chunks cost
less CPU per glance and often finish sooner. The sizer keeps, per variant, an exponentially
weighted mean of the fan-out time (first chunk sent to last reply) and moves the chunk size by
a factor ``max_step`` per request:

- mean below three quarters of ``target_ms``: grow, up to ``max_size``;
- mean above ``target_ms``: shrink, down to the configured chunk size;
- in between: keep the size.

The configured chunk size is the floor. Smaller chunks mean more calls and more CPU, so on a
saturated machine shrinking below it would make every call slower still. A fan-out that ran out
of time counts with the time it took, so chunks shrink back after deadline failures too.

With ``target_ms`` 0 (the default) the configured sizes are used unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["GROW_BELOW", "AdaptiveChunkConfig", "ChunkSizer"]

logger = logging.getLogger(__name__)

# Share of the target below which the mean fan-out time lets chunks grow. Between it and the
# target the size holds, so a size just under the target does not flip between two values.
GROW_BELOW = 0.75


@dataclass(frozen=True)
class AdaptiveChunkConfig:
    """Target and bounds of the adaptive chunk size."""

    # Fan-out time the chunk size is chosen for, in milliseconds; 0 turns adaptation off.
    target_ms: float = 0.0
    # Largest chunk size the sizer picks.
    max_size: int = 1000
    # Weight of the newest request in the mean fan-out time.
    smoothing: float = 0.2
    # Largest factor between two consecutive sizes of a variant.
    max_step: float = 2.0

    def __post_init__(self) -> None:
        if self.target_ms < 0:
            raise ValueError(f"target_ms must not be negative, got {self.target_ms}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {self.max_size}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.max_step < 1:
            raise ValueError(f"max_step must be at least 1, got {self.max_step}")

    @property
    def enabled(self) -> bool:
        return self.target_ms > 0


class ChunkSizer:
    """Chooses the chunk size of each request from the fan-out times of earlier ones."""

    def __init__(self, config: AdaptiveChunkConfig, *, registry: CollectorRegistry | None = None, tier: str = "l1"):
        self.config = config
        self._mean_seconds: dict[str, float] = {}
        self._sizes: dict[str, int] = {}
        self._tier = tier
        self._gauge = None
        if registry is not None and config.enabled:
            self._gauge = Gauge(
                "fmlite_adaptive_chunk_size",
                "Chunk size the L1 currently uses per variant, chosen from measured fan-out times.",
                ["tier", "variant"],
                registry=registry,
            )

    def size(self, variant: str, configured: int) -> int:
        """Return the chunk size for the next request of ``variant``; ``configured`` when adaptation is off."""
        if not self.config.enabled:
            return configured
        return self._sizes.get(variant, configured)

    def observe(self, variant: str, configured: int, seconds: float) -> None:
        """Record that a request of ``variant`` took ``seconds`` from its first chunk call to its last reply."""
        config = self.config
        if not config.enabled or seconds <= 0:
            return
        previous = self._mean_seconds.get(variant)
        mean = seconds if previous is None else previous + config.smoothing * (seconds - previous)
        self._mean_seconds[variant] = mean
        current = self._sizes.get(variant, configured)
        target_s = config.target_ms / 1000.0
        chosen = current
        if mean < GROW_BELOW * target_s:
            chosen = int(min(current * config.max_step, max(config.max_size, configured)))
        elif mean > target_s:
            chosen = int(max(current / config.max_step, configured))
        if chosen != current:
            logger.debug("variant %s: chunk size %d -> %d (mean fan-out %.1f ms)", variant, current, chosen, mean * 1000)
        self._sizes[variant] = chosen
        if self._gauge is not None:
            self._gauge.labels(tier=self._tier, variant=variant).set(chosen)
