"""Hedged chunk calls: when to send a second copy of a slow chunk, and how many may be sent.

A chunk call still pending after the hedge delay gets a second copy on another replica; the
first reply wins and the other call is cancelled. The delay is a percentile (default the 95th)
of the latency of recent first calls, so about one call in twenty would qualify on latency
alone. A token bucket caps the hedges at ``budget`` per first call (default 0.05, at most 5%
extra leaf calls) plus a burst of ``burst``: each first call adds ``budget`` tokens and each
hedge takes one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HedgeConfig", "HedgePolicy"]


@dataclass(frozen=True)
class HedgeConfig:
    """Settings of hedged chunk calls."""

    enabled: bool = True
    # Percentile of recent first-call latencies used as the hedge delay.
    percentile: float = 95.0
    # Hedges allowed per first call, averaged over time.
    budget: float = 0.05
    # Most hedges the budget can hold at once.
    burst: float = 10.0
    # Lower bound of the delay, so a burst of fast replies does not make every call a hedge.
    min_delay_ms: float = 2.0
    # Latency samples needed before the first hedge.
    min_samples: int = 50
    # Number of recent first-call latencies the percentile is taken over.
    window: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")
        if not 0 <= self.budget <= 1:
            raise ValueError(f"budget must be in [0, 1] hedges per call, got {self.budget}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if self.min_delay_ms < 0:
            raise ValueError(f"min_delay_ms must not be negative, got {self.min_delay_ms}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"min_samples must be in 1..window ({self.window}), got {self.min_samples}")


class HedgePolicy:
    """Latency window, hedge delay and hedge budget of one replica set."""

    # The percentile is recomputed after this many new samples, not on every call.
    RECOMPUTE_EVERY = 32

    def __init__(self, config: HedgeConfig):
        self.config = config
        self._samples = np.zeros(config.window, dtype=np.float64)
        self._count = 0
        self._since_recompute = 0
        self._delay_s: float | None = None
        self._tokens = 0.0

    def observe(self, latency_s: float) -> None:
        """Record the latency of a first call that returned."""
        self._samples[self._count % self.config.window] = latency_s
        self._count += 1
        self._since_recompute += 1
        if self._since_recompute >= self.RECOMPUTE_EVERY and self._count >= self.config.min_samples:
            self._since_recompute = 0
            filled = self._samples[: min(self._count, self.config.window)]
            self._delay_s = max(float(np.percentile(filled, self.config.percentile)), self.config.min_delay_ms / 1000.0)

    def delay_s(self) -> float | None:
        """Return the current hedge delay, or None while hedging is off or samples are too few."""
        return self._delay_s if self.config.enabled else None

    def add_calls(self, count: int) -> None:
        """Credit the budget for ``count`` first calls."""
        self._tokens = min(self.config.burst, self._tokens + count * self.config.budget)

    def try_acquire(self) -> bool:
        """Take one hedge from the budget; return False when it is spent."""
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def refund(self) -> None:
        """Return a hedge that could not be sent."""
        self._tokens = min(self.config.burst, self._tokens + 1.0)
