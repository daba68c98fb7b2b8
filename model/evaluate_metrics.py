"""Every figure of the comparison for one model's scores on the held-out day, with bootstrap intervals.

Per user (the user's candidates of the day pooled and ranked by score, as the replay of a
served day does): MAP@k and MPRR@k for each k, defined for users with at least one peek.
Per impression (one logged row, as MIND's published figures are computed): AUC, MRR and
nDCG@10, averaged over impressions; AUC needs a peek and a non-peek in the row, MRR and nDCG a
peek. Intervals come from ``model.bootstrap.UserBootstrap`` over users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from model.bootstrap import Interval, UserBootstrap
from model.metrics import auc, average_precision_at_k, ndcg_at_k, peek_rate_ratio_at_k, reciprocal_rank

__all__ = ["TestLayout", "MetricSet", "metric_names", "score_metrics", "IMPRESSION_METRICS"]

IMPRESSION_METRICS = ("auc", "mrr", "ndcg@10")


def metric_names(ks: tuple[int, ...]) -> list[str]:
    """Return the metric keys in report order: MAP@k, MPRR@k, then the per-impression metrics."""
    return [f"map@{k}" for k in ks] + [f"mprr@{k}" for k in ks] + list(IMPRESSION_METRICS)


def _slices(codes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (order, bounds): rows of code ``i`` are ``order[bounds[i]:bounds[i + 1]]``, input order kept."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(count + 1))
    return order, bounds


@dataclass(frozen=True)
class TestLayout:
    """Rows of the held-out day grouped by user and by impression; built once, shared by all models."""

    labels: np.ndarray
    user_codes: np.ndarray
    impression_codes: np.ndarray
    impression_users: np.ndarray
    user_ids: np.ndarray
    users: int
    impressions: int

    @classmethod
    def build(cls, *, user_ids: np.ndarray, impression_ids: np.ndarray, labels: np.ndarray) -> "TestLayout":
        user_codes, unique_users = _factorize(user_ids)
        impression_codes, _ = _factorize(impression_ids)
        impression_users = np.zeros(int(impression_codes.max()) + 1 if len(impression_codes) else 0, dtype=np.int64)
        impression_users[impression_codes] = user_codes
        return cls(
            labels=np.asarray(labels, dtype=np.int64),
            user_codes=user_codes,
            impression_codes=impression_codes,
            impression_users=impression_users,
            user_ids=unique_users,
            users=len(unique_users),
            impressions=len(impression_users),
        )


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.reshape(-1).astype(np.int64), unique


@dataclass(frozen=True)
class MetricSet:
    """Intervals of every metric plus the per-user values behind the per-user metrics."""

    intervals: dict[str, Interval]
    per_user: dict[str, np.ndarray]


def _grouped(
    scores: np.ndarray,
    labels: np.ndarray,
    codes: np.ndarray,
    count: int,
    functions: dict[str, Callable[[np.ndarray, np.ndarray], float | None]],
) -> dict[str, np.ndarray]:
    order, bounds = _slices(codes, count)
    values = {name: np.full(count, np.nan) for name in functions}
    for index in range(count):
        rows = order[bounds[index] : bounds[index + 1]]
        if len(rows) == 0:
            continue
        group_scores, group_labels = scores[rows], labels[rows]
        for name, function in functions.items():
            value = function(group_scores, group_labels)
            if value is not None:
                values[name][index] = value
    return values


def score_metrics(layout: TestLayout, scores: np.ndarray, *, ks: tuple[int, ...], bootstrap: UserBootstrap) -> MetricSet:
    """Compute every metric of ``scores`` (aligned with ``layout.labels``) with its interval."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != layout.labels.shape:
        raise ValueError(f"scores have shape {scores.shape}, the held-out day has {layout.labels.shape} rows")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")

    user_functions: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {}
    for k in ks:
        user_functions[f"map@{k}"] = lambda s, y, k=k: average_precision_at_k(s, y, k)
        user_functions[f"mprr@{k}"] = lambda s, y, k=k: peek_rate_ratio_at_k(s, y, k)
    per_user = _grouped(scores, layout.labels, layout.user_codes, layout.users, user_functions)

    impression_functions: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {
        "auc": auc,
        "mrr": reciprocal_rank,
        "ndcg@10": lambda s, y: ndcg_at_k(s, y, 10),
    }
    per_impression = _grouped(scores, layout.labels, layout.impression_codes, layout.impressions, impression_functions)

    intervals: dict[str, Interval] = {}
    for name in metric_names(ks):
        if name in per_user:
            intervals[name] = bootstrap.mean(per_user[name])
            continue
        values = per_impression[name]
        defined = np.isfinite(values)
        sums = np.bincount(layout.impression_users, weights=np.where(defined, values, 0.0), minlength=layout.users)
        counts = np.bincount(layout.impression_users, weights=defined.astype(np.float64), minlength=layout.users)
        intervals[name] = bootstrap.ratio(sums, counts)
    return MetricSet(intervals=intervals, per_user=per_user)
