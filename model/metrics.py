"""Ranking metrics: MAP@k and MPRR@k as FM-Lite's evaluation defines them, plus AUC.

Definitions (per user u with candidates ranked by descending score, ties kept in input order):

- AP@k(u) = (1 / min(m_u, k)) * sum_{i=1..k} P(i) * rel(i), where rel(i) is 1 when the item at
  rank i was peeked, P(i) is the precision of the top i, and m_u the user's number of peeked
  items. MAP@k is the mean of AP@k over users with at least one peek; users without a peek have
  no defined AP and are left out (the functions report how many were used).
- PRR@k(u) = (peek rate of the top k) / (peek rate of all of u's candidates); MPRR@k is its mean
  over users with at least one peek.
- AUC: probability that a random peeked item scores above a random non-peeked one (ties count
  one half), from average ranks (Mann-Whitney U).
- MRR and nDCG@k as MIND's evaluation computes them per impression: with rank r_j (1-based) of
  each peeked item j, MRR = mean_j 1 / r_j over the impression's peeked items, and
  nDCG@k = DCG@k / ideal DCG@k with DCG@k = sum_{i<=k} (2^rel(i) - 1) / log2(i + 1). Published
  MIND figures average these (and AUC) over impressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "ranked_labels",
    "average_precision_at_k",
    "peek_rate_ratio_at_k",
    "auc",
    "reciprocal_rank",
    "ndcg_at_k",
    "UserMetric",
    "mean_over_users",
]


def ranked_labels(scores: Sequence[float], labels: Sequence[int]) -> np.ndarray:
    """Return ``labels`` sorted by descending score; equal scores keep their input order."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape} vs {labels.shape}")
    order = np.argsort(-scores, kind="stable")
    return labels[order]


def average_precision_at_k(scores: Sequence[float], labels: Sequence[int], k: int) -> float | None:
    """Return AP@k of one user's candidates, or None when the user has no peek."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranked = ranked_labels(scores, labels)
    relevant = int(ranked.sum())
    if relevant == 0:
        return None
    top = ranked[:k]
    hits = np.cumsum(top)
    precision = hits / np.arange(1, len(top) + 1)
    return float((precision * top).sum() / min(relevant, k))


def peek_rate_ratio_at_k(scores: Sequence[float], labels: Sequence[int], k: int) -> float | None:
    """Return PRR@k of one user's candidates, or None when the user has no peek."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranked = ranked_labels(scores, labels)
    overall = ranked.mean() if len(ranked) else 0.0
    if overall == 0:
        return None
    return float(ranked[:k].mean() / overall)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Return ROC AUC, or None when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks (1-based) over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    rank_sum = ranks[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def reciprocal_rank(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Return the mean of 1 / rank over the peeked items (MIND's MRR), or None without a peek."""
    ranked = ranked_labels(scores, labels)
    relevant = int(ranked.sum())
    if relevant == 0:
        return None
    ranks = np.flatnonzero(ranked) + 1
    return float((1.0 / ranks).sum() / relevant)


def ndcg_at_k(scores: Sequence[float], labels: Sequence[int], k: int) -> float | None:
    """Return nDCG@k with binary gains and log2(rank + 1) discounts, or None without a peek."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranked = ranked_labels(scores, labels)
    relevant = int(ranked.sum())
    if relevant == 0:
        return None
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top = ranked[:k]
    dcg = float((top * discounts[: len(top)]).sum())
    ideal = float(discounts[: min(relevant, k)].sum())
    return dcg / ideal


@dataclass(frozen=True)
class UserMetric:
    """Mean of a per-user metric and the number of users it was defined for."""

    value: float
    users: int
    users_skipped: int


def mean_over_users(values: Iterable[float | None]) -> UserMetric:
    """Average per-user values, leaving out users whose value is undefined (None)."""
    defined = []
    skipped = 0
    for value in values:
        if value is None:
            skipped += 1
        else:
            defined.append(value)
    return UserMetric(value=float(np.mean(defined)) if defined else float("nan"), users=len(defined), users_skipped=skipped)
