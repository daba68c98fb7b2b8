"""Exploration policies that L0 applies to a request's scores, so that fresh glances reach users.

A client shows the glances of a response in descending score order, and the first
``slate_size`` of them are the ones a user sees. A policy raises the scores of some positions
so that they enter (or climb within) that slate. Positions it moves up into the slate carry
``FLAG_EXPLORED``; the scores before the policy go back in ``scores_before_exploration``, so
offline evaluation can separate explored from exploited impressions.

Policies:

- ``epsilon_greedy``: with probability ``epsilon`` per request, up to ``max_promotions`` fresh
  glances (first shown less than ``max_age_hours`` ago, or not in the statistics at all) that
  are outside the slate are placed at uniformly drawn slate positions. A promoted glance gets the
  midpoint of the scores of its new neighbours (above the first: the midpoint of the top score
  and 1).
- ``thompson``: every glance's peek rate has the posterior
  ``Beta(m c + peeks, (1 - m) c + impressions - peeks)``, with ``m`` the pooled peek rate of the
  statistics and ``c`` = ``prior_strength``. One draw ``theta`` per glance and request adds
  ``max(0, logit(theta) - logit(posterior mean))`` to the logit of the glance's score. The bonus
  vanishes as a glance's impressions grow, so the model's ranking of well-known glances is kept
  and little-shown glances move up at random, by more the less they were shown.

Every draw comes from a generator seeded with the request id and the bucket name, so a logged
request replayed with the same time, scores and statistics gets the same result.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from fmlite.glance_stats import GlanceStats

__all__ = [
    "ExploreConfigError",
    "EpsilonGreedy",
    "ThompsonSampling",
    "ExplorationPolicy",
    "ExplorationResult",
    "parse_policy",
    "request_generator",
    "apply_policy",
]

# Scores are clipped to [_EDGE, 1 - _EDGE] before taking their logit.
_EDGE = 1e-7


class ExploreConfigError(ValueError):
    """An exploration policy in the traffic config is invalid; the message names the key."""


@dataclass(frozen=True)
class EpsilonGreedy:
    """Promote fresh glances into random slate positions in a share ``epsilon`` of requests."""

    epsilon: float
    max_age_hours: float
    slate_size: int = 10
    max_promotions: int = 1

    name = "epsilon_greedy"


@dataclass(frozen=True)
class ThompsonSampling:
    """Add a sampled optimistic bonus from each glance's Beta posterior of its peek rate."""

    prior_strength: float = 20.0
    slate_size: int = 10

    name = "thompson"


ExplorationPolicy = Union[EpsilonGreedy, ThompsonSampling]

_KEYS = {
    "epsilon_greedy": {"policy", "epsilon", "max_age_hours", "slate_size", "max_promotions"},
    "thompson": {"policy", "prior_strength", "slate_size"},
}


def _number(raw: Mapping[str, Any], key: str, where: str, *, default: float | None, low: float, high: float, low_open: bool = False) -> float:
    value = raw.get(key, default)
    if value is None:
        raise ExploreConfigError(f"{where}.{key} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExploreConfigError(f"{where}.{key} must be a number, got {value!r}")
    below = value <= low if low_open else value < low
    if below or value > high:
        interval = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ExploreConfigError(f"{where}.{key} must be in {interval}, got {value!r}")
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, where: str, *, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExploreConfigError(f"{where}.{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def parse_policy(raw: Any, where: str) -> ExplorationPolicy:
    """Validate one ``explore`` object of the traffic config; ``where`` names it in errors."""
    if not isinstance(raw, Mapping):
        raise ExploreConfigError(f"{where} must be an object, got {type(raw).__name__}")
    policy = raw.get("policy")
    if policy not in _KEYS:
        raise ExploreConfigError(f"{where}.policy must be one of {sorted(_KEYS)}, got {policy!r}")
    unknown = set(raw) - _KEYS[policy]
    if unknown:
        raise ExploreConfigError(f"{where} has unknown keys {sorted(unknown)}; the {policy} policy takes {sorted(_KEYS[policy])}")
    slate_size = _integer(raw, "slate_size", where, default=10, low=1, high=1000)
    if policy == "epsilon_greedy":
        return EpsilonGreedy(
            epsilon=_number(raw, "epsilon", where, default=None, low=0.0, high=1.0),
            max_age_hours=_number(raw, "max_age_hours", where, default=None, low=0.0, high=24.0 * 365, low_open=True),
            slate_size=slate_size,
            max_promotions=_integer(raw, "max_promotions", where, default=1, low=1, high=slate_size),
        )
    return ThompsonSampling(
        prior_strength=_number(raw, "prior_strength", where, default=20.0, low=0.0, high=1e9, low_open=True),
        slate_size=slate_size,
    )


@dataclass(frozen=True)
class ExplorationResult:
    """Scores after the policy and the positions it moved up into the slate."""

    scores: np.ndarray
    explored: np.ndarray

    @property
    def explored_count(self) -> int:
        return int(self.explored.sum())


def request_generator(request_id: str, salt: str) -> np.random.Generator:
    """Return the generator of one request: seeded with BLAKE2b of the request id and ``salt``."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=16, person=b"fmlite-explore", salt=hashlib.blake2b(salt.encode("utf-8"), digest_size=16).digest())
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Return each position's 0-based rank in descending score order; ties keep request order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores))
    return ranks


def _promote(policy: EpsilonGreedy, scores: np.ndarray, ages: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    count = len(scores)
    served = scores.copy()
    if rng.random() >= policy.epsilon:
        return served
    slate = min(policy.slate_size, count)
    ranks = _ranks(scores)
    candidates = np.flatnonzero((ages < policy.max_age_hours) & (ranks >= slate))
    promotions = min(policy.max_promotions, len(candidates), slate)
    if promotions == 0:
        return served
    chosen = rng.choice(candidates, size=promotions, replace=False)
    slots = np.sort(rng.choice(slate, size=promotions, replace=False))
    promoted = set(chosen.tolist())
    order = [int(position) for position in np.argsort(-scores, kind="stable") if int(position) not in promoted]
    for slot, position in zip(slots.tolist(), chosen.tolist()):
        order.insert(slot, position)
    # Each promoted position gets the midpoint of its neighbours in the final order; the one
    # above it already has its final score, because positions are filled from the top.
    for rank, position in enumerate(order):
        if position not in promoted:
            continue
        upper = served[order[rank - 1]] if rank > 0 else max(1.0, float(scores.max()))
        lower_candidates = [served[p] for p in order[rank + 1:] if p not in promoted]
        lower = lower_candidates[0] if lower_candidates else upper - 1.0
        served[position] = (upper + lower) / 2.0 if upper > lower else np.nextafter(upper, np.inf)
    return served


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EDGE, 1.0 - _EDGE)
    return np.log(p) - np.log1p(-p)


def _thompson(policy: ThompsonSampling, scores: np.ndarray, glance_ids: Sequence[str], stats: GlanceStats, rng: np.random.Generator) -> np.ndarray:
    unique, inverse = np.unique(np.asarray(glance_ids, dtype=object).astype(str), return_inverse=True)
    impressions, peeks = stats.counts(unique.tolist())
    prior = min(max(stats.prior_peek_rate, _EDGE), 1.0 - _EDGE)
    alpha = prior * policy.prior_strength + peeks
    beta = (1.0 - prior) * policy.prior_strength + (impressions - peeks)
    theta = rng.beta(alpha, beta)
    bonus = np.maximum(0.0, _logit(theta) - _logit(alpha / (alpha + beta)))[inverse.reshape(-1)]
    served = scores.copy()
    moved = bonus > 0
    if moved.any():
        logits = _logit(scores[moved]) + bonus[moved]
        served[moved] = 1.0 / (1.0 + np.exp(-logits))
    return served


def apply_policy(
    policy: ExplorationPolicy,
    *,
    scores: Sequence[float],
    glance_ids: Sequence[str],
    stats: GlanceStats,
    now_ms: int,
    request_id: str,
    salt: str,
) -> ExplorationResult:
    """Apply ``policy`` to one request's scores and flag the positions it moved up into the slate."""
    original = np.asarray(scores, dtype=np.float64)
    if len(original) != len(glance_ids):
        raise ValueError(f"{len(original)} scores for {len(glance_ids)} glance ids")
    if len(original) == 0:
        return ExplorationResult(scores=original, explored=np.zeros(0, dtype=bool))
    rng = request_generator(request_id, salt)
    if isinstance(policy, EpsilonGreedy):
        served = _promote(policy, original, stats.ages_hours(glance_ids, now_ms=now_ms), rng)
    else:
        served = _thompson(policy, original, glance_ids, stats, rng)
    before, after = _ranks(original), _ranks(served)
    explored = (served > original) & (after < policy.slate_size) & (after < before)
    return ExplorationResult(scores=served, explored=explored)
