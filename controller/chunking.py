"""Chunk size of an L1, chosen per request from the measured cost of leaf calls.

Every leaf call pays a fixed cost (a Thrift call on both ends, decoding, the leaf's per-call
work) and a cost per glance id, so fewer, larger chunks cost less CPU per glance. A leaf serves
its calls one at a time, so splitting a request into more chunks than there are replicas does
not make a healthy shard reply sooner either. Larger chunks do make each call longer, and a
call must leave time for a retry or hedge before the request's deadline.

The sizer keeps, per variant, an exponentially weighted least-squares fit of the time of one
leaf call, ``t(s) = fixed + per_glance * s`` for a chunk of ``s`` ids. Each request gives one
sample: its fan-out time (first chunk sent to last reply) divided by the chunk calls each
replica had to serve, ``ceil(chunks / replicas)``, paired with the mean chunk size. When the
recent sizes are too close together to separate the two terms, the fit takes the whole time as
per-glance cost, which overestimates the time of larger chunks and so errs toward smaller ones.

For a request of ``n`` ids the sizer picks the fewest chunks whose predicted call time
``t(ceil(n / chunks))`` fits ``budget_share`` of the call budget. That budget is the time left
to the deadline, capped by the chunk timeout. There is at least one chunk per admitted replica,
so that the replicas share the work. Chunks never fall below ``min_size`` ids (unless the request is smaller), never exceed
``max_size`` and grow by at most ``max_growth`` per request, so a leaf that is slower than the
fit is met with a few moderate sizes first. A variant starts at its configured chunk size.

NOTE: with a single replica, more chunks do not shorten a request, because the leaf serves them
in turn. Shrinking then bounds the time of each call, not of the request.

With ``enabled`` False the configured sizes are used unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from rpc.idl import fmlite_thrift

__all__ = ["MIN_RELATIVE_SPREAD", "SLOWER_SAMPLE_WEIGHT", "AdaptiveChunkConfig", "CallCostFit", "ChunkSizer"]

logger = logging.getLogger(__name__)

MAX_GLANCES = fmlite_thrift.MAX_GLANCES_PER_REQUEST
# Weighted standard deviation of recent chunk sizes, relative to their mean, below which the
# fit cannot tell the fixed cost from the per-glance cost and charges everything per glance.
MIN_RELATIVE_SPREAD = 0.05
# Weight of a sample slower than the fit predicts: the fit follows a slowing leaf within a few
# requests and a recovering one at ``sample_weight``, as the replicas' peak latency estimate does.
SLOWER_SAMPLE_WEIGHT = 0.5


@dataclass(frozen=True)
class AdaptiveChunkConfig:
    """Bounds and budget of the chunk size chosen from measured leaf-call cost."""

    # False sends chunks of exactly the configured size.
    enabled: bool = True
    # Smallest chunk, in glance ids; a smaller request is sent as one chunk.
    min_size: int = 50
    # Largest chunk, in glance ids.
    max_size: int = MAX_GLANCES
    # Share of the call budget that one chunk call's predicted time may take.
    budget_share: float = 0.5
    # Largest factor by which a variant's chunk size grows from one request to the next.
    max_growth: float = 2.0
    # Weight of the newest sample in the fit when it is not slower than predicted; older samples
    # fade by (1 - weight) per request.
    sample_weight: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= MAX_GLANCES:
            raise ValueError(f"min_size must be in 1..{MAX_GLANCES}, got {self.min_size}")
        if not self.min_size <= self.max_size <= MAX_GLANCES:
            raise ValueError(f"max_size must be in {self.min_size}..{MAX_GLANCES} (min_size..MAX_GLANCES_PER_REQUEST), got {self.max_size}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_growth < 1:
            raise ValueError(f"max_growth must be at least 1, got {self.max_growth}")
        if not 0 < self.sample_weight <= 1:
            raise ValueError(f"sample_weight must be in (0, 1], got {self.sample_weight}")


class CallCostFit:
    """Exponentially weighted least-squares fit of ``seconds = fixed_s + per_glance_s * size``."""

    __slots__ = ("_weight", "_samples", "_s", "_t", "_ss", "_st", "fixed_s", "per_glance_s")

    def __init__(self, sample_weight: float):
        self._weight = sample_weight
        self._samples = 0
        # Weighted means of size, seconds, size squared and size times seconds.
        self._s = self._t = self._ss = self._st = 0.0
        self.fixed_s = 0.0
        self.per_glance_s = 0.0

    @property
    def empty(self) -> bool:
        return self._samples == 0

    def add(self, size: float, seconds: float) -> None:
        """Add one sample and refit."""
        if self._samples == 0:
            weight = 1.0
        elif seconds > self.seconds(size):
            weight = max(self._weight, SLOWER_SAMPLE_WEIGHT)
        else:
            weight = self._weight
        self._samples += 1
        self._s += weight * (size - self._s)
        self._t += weight * (seconds - self._t)
        self._ss += weight * (size * size - self._ss)
        self._st += weight * (size * seconds - self._st)
        mean_s, mean_t = self._s, self._t
        variance = max(self._ss - mean_s * mean_s, 0.0)
        if variance <= (MIN_RELATIVE_SPREAD * mean_s) ** 2:
            self.fixed_s, self.per_glance_s = 0.0, mean_t / mean_s
            return
        slope = (self._st - mean_s * mean_t) / variance
        intercept = mean_t - slope * mean_s
        if slope < 0:
            self.fixed_s, self.per_glance_s = mean_t, 0.0
        elif intercept < 0:
            self.fixed_s, self.per_glance_s = 0.0, self._st / self._ss
        else:
            self.fixed_s, self.per_glance_s = intercept, slope

    def seconds(self, size: float) -> float:
        """Return the predicted time of one call of ``size`` ids."""
        return self.fixed_s + self.per_glance_s * size


class ChunkSizer:
    """Chooses each request's chunk size from the measured cost of earlier leaf calls."""

    def __init__(self, config: AdaptiveChunkConfig, *, registry: CollectorRegistry | None = None, tier: str = "l1"):
        self.config = config
        self.fits: dict[str, CallCostFit] = {}
        self._last_sizes: dict[str, int] = {}
        self._tier = tier
        self._gauges: tuple[Gauge, Gauge, Gauge] | None = None
        if registry is not None and config.enabled:
            self._gauges = (
                Gauge("fmlite_adaptive_chunk_size", "Chunk size of the last request per variant, in glance ids.", ["tier", "variant"], registry=registry),
                Gauge("fmlite_leaf_call_fixed_seconds", "Fitted fixed time of one leaf call per variant.", ["tier", "variant"], registry=registry),
                Gauge("fmlite_leaf_call_per_glance_seconds", "Fitted time per glance id of one leaf call per variant.", ["tier", "variant"], registry=registry),
            )

    def size(self, variant: str, configured: int, *, count: int, replicas: int, budget_s: float) -> int:
        """Return the chunk size for a request of ``count`` ids of ``variant``.

        ``configured`` is the variant's fixed size (used as is when adaptation is off, and as the
        first size otherwise), ``replicas`` the admitted leaf replicas and ``budget_s`` the time one
        chunk call may take (time left to the deadline, capped by the chunk timeout).
        """
        config = self.config
        if not config.enabled:
            return configured
        if count <= 0:
            return configured
        previous = self._last_sizes.get(variant, min(configured, config.max_size))
        largest = min(config.max_size, max(int(previous * config.max_growth), config.min_size), count)
        smallest = min(config.min_size, count)
        # Start from the fewest chunks: one per replica, or as many as the size cap requires.
        size = max(min(math.ceil(count / max(replicas, 1)), largest), smallest)
        fit = self.fits.get(variant)
        if fit is not None and not fit.empty:
            allowed_s = config.budget_share * budget_s
            if fit.seconds(size) > allowed_s:
                if fit.per_glance_s > 0:
                    size = int((allowed_s - fit.fixed_s) / fit.per_glance_s)
                else:
                    size = smallest  # the fixed cost alone exceeds the share
                size = max(size, smallest)
        if size != previous:
            logger.debug("variant %s: chunk size %d -> %d for %d ids on %d replicas", variant, previous, size, count, replicas)
        self._last_sizes[variant] = size
        if self._gauges is not None:
            self._gauges[0].labels(tier=self._tier, variant=variant).set(size)
        return size

    def observe(self, variant: str, *, count: int, chunks: int, replicas: int, seconds: float) -> None:
        """Record that ``count`` ids sent as ``chunks`` chunks took ``seconds`` from the first call to the last reply."""
        if not self.config.enabled or seconds <= 0 or count <= 0 or chunks <= 0:
            return
        rounds = math.ceil(chunks / max(replicas, 1))
        fit = self.fits.get(variant)
        if fit is None:
            fit = self.fits[variant] = CallCostFit(self.config.sample_weight)
        fit.add(count / chunks, seconds / rounds)
        if self._gauges is not None:
            self._gauges[1].labels(tier=self._tier, variant=variant).set(fit.fixed_s)
            self._gauges[2].labels(tier=self._tier, variant=variant).set(fit.per_glance_s)
