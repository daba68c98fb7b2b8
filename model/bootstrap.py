"""Bootstrap confidence intervals over users for per-user and per-impression metrics.

Every figure of the evaluation is a ratio of sums over users: MAP@k is the sum of the users'
AP@k over the number of users with a defined AP@k, and a per-impression metric (AUC, MRR,
nDCG@10 as MIND reports them) is the sum over the users' impressions over their number. One
resample draws ``n`` users with replacement (a multinomial count per user) and recomputes the
ratio, so impressions of one user stay together (a cluster bootstrap). All models share the
same resamples, which makes a paired interval of the difference between two models possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "UserBootstrap"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval and the number of units behind it."""

    value: float
    low: float
    high: float
    count: int

    def overlaps(self, other: "Interval") -> bool:
        """Return True when the two intervals share at least one point."""
        return not (self.high < other.low or other.high < self.low)

    def to_json(self) -> dict[str, float | int | None]:
        def finite(number: float) -> float | None:
            return float(number) if np.isfinite(number) else None

        return {"value": finite(self.value), "low": finite(self.low), "high": finite(self.high), "count": int(self.count)}


class UserBootstrap:
    """Resample ``users`` users with replacement ``resamples`` times, with a fixed seed.

    The resample weights (a ``[resamples, users]`` float32 matrix of multinomial counts,
    4 bytes per cell) are drawn once and reused for every metric and model.
    """

    def __init__(self, users: int, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> None:
        if users < 1:
            raise ValueError(f"users must be at least 1, got {users}")
        if resamples < 10:
            raise ValueError(f"resamples must be at least 10, got {resamples}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.users = users
        self.resamples = resamples
        self.confidence = confidence
        rng = np.random.default_rng(seed)
        self.weights = rng.multinomial(users, np.full(users, 1.0 / users), size=resamples).astype(np.float32)

    def _quantiles(self, samples: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.confidence) / 2.0
        finite = samples[np.isfinite(samples)]
        if len(finite) == 0:
            return float("nan"), float("nan")
        low, high = np.quantile(finite, [tail, 1.0 - tail])
        return float(low), float(high)

    def _check(self, array: np.ndarray, name: str) -> np.ndarray:
        array = np.asarray(array, dtype=np.float64)
        if array.shape != (self.users,):
            raise ValueError(f"{name} must have one entry per user ({self.users}), got shape {array.shape}")
        return array

    def _resampled_ratio(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        numerator = self.weights @ sums.astype(np.float32)
        denominator = self.weights @ counts.astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12), np.nan)

    def ratio(self, sums: np.ndarray, counts: np.ndarray) -> Interval:
        """Return the interval of ``sum(sums) / sum(counts)`` over resampled users.

        ``sums[u]`` is user ``u``'s total of a metric and ``counts[u]`` the number of values in
        it (0 for a user for whom the metric is undefined, such as MAP of a user without a peek).
        """
        sums = self._check(sums, "sums")
        counts = self._check(counts, "counts")
        total = counts.sum()
        value = float(sums.sum() / total) if total > 0 else float("nan")
        low, high = self._quantiles(self._resampled_ratio(sums, counts))
        return Interval(value=value, low=low, high=high, count=int((counts > 0).sum()))

    def mean(self, values: np.ndarray) -> Interval:
        """Return the interval of the mean of per-user ``values``; NaN marks an undefined value."""
        values = self._check(values, "values")
        defined = np.isfinite(values)
        return self.ratio(np.where(defined, values, 0.0), defined.astype(np.float64))

    def difference(self, values_a: np.ndarray, values_b: np.ndarray) -> Interval:
        """Return the paired interval of mean(a) - mean(b) over users where both are defined."""
        values_a = self._check(values_a, "values_a")
        values_b = self._check(values_b, "values_b")
        defined = np.isfinite(values_a) & np.isfinite(values_b)
        delta = np.where(defined, values_a - values_b, 0.0)
        return self.ratio(delta, defined.astype(np.float64))
