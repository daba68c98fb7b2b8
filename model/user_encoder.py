"""User encoder: the profile ``u = [u_MF, u_IF, u_TF]`` of every user over a history window.

For user ``u`` with events ``i`` (glance ``g_i``, day ``t_i``, label ``y_i`` = 1 for a peek)
among glances that have content:

- recency weight ``w_i = d(t_i) = exp((t_i - t_p) / T)`` with ``t_p`` the present day (the
  last day of the history window) and ``T`` the window length in days, so an event of the
  present day weighs 1 and one ``T`` days earlier weighs ``1/e``; ``w_i = 1`` with decay off;
- ``u_TF = sum_i w_i y_i g_TF(g_i) / sum_i w_i y_i``: the weighted mean text embedding of the
  peeked glances; ``u_IF`` likewise over the peeked glances that have an image;
- ``u_MF[j] = n_u * (P_j + H_j) / (S_j + h * e_j / p)``: the user's peek rate per meta value
  (0 where the user saw no glance with that value), capped at 1. ``P_j`` and ``S_j`` are the
  weighted peeks and impressions of logged impressions whose glance has value ``j``. ``H_j``
  and ``h`` are the weighted history clicks (clicks logged without their impression, as in
  MIND's history column) on glances with value ``j`` and in total. Such a click is a peek
  whose non-peeked neighbours were never logged, so it counts as ``1 / p`` impressions with the
  population's mix of meta values. Here ``p`` is the peek rate of all logged impressions of the
  window and ``e_j`` the share of them whose glance has value ``j``. Counted as one impression,
  a history click would read as an impression that was always peeked, and a user with only
  history clicks would get a peek rate of 1.0 for every value they clicked.
- with log lifts (the default), ``u_MF[j] = n_u * log(min((N_j + m r_j) / (D_j + m), 1) / r_j)``
  instead, where ``N_j / D_j`` is the rate above (numerator and denominator), ``r_j`` the
  population's peek rate of value ``j`` over the window's logged impressions, smoothed by one
  pseudo-impression at ``p``, and ``m`` a prior of pseudo-impressions at ``r_j``. A value the
  user was never shown gets 0, "peeks like everyone", where a plain rate reads 0 as "never
  peeks"; a value shown twice without a peek moves only a little below 0. Rankers score in
  log-odds, and at peek rates of a few percent the log of a rate ratio is close to a log-odds
  difference. So an inner product with a glance's one-hot meta adds up the user's lifts for
  the glance's category, subcategory and format.
- ``n_u = 1 - (F^-1(0.975 | a+1, b+1) - F^-1(0.025 | a+1, b+1))`` is the beta-interval factor,
  with ``F^-1`` the inverse CDF of the beta distribution, for ``a`` peeks and ``b`` non-peeks:
  the logged ones plus, per history click, one peek and ``1 / p - 1`` non-peeks. A user with
  few events has a wide interval and a small factor, so a high peek rate from three events
  counts less than the same rate from three hundred. ``n_u = 1`` with normalisation off.

An optional boolean ``logged`` column of the events marks history clicks (False); without it
every event is a logged impression. ``HistoryExposure`` contains ``p``, ``e`` and ``r``. A
distributed build computes it once over the whole window and passes it to every partition.

Sections without evidence are zeros: ``u_TF`` of a user who peeked at nothing with content,
``u_IF`` of a user who peeked at nothing with an image. Users without any event on a glance
with content get no profile and are served the cold-start profile, which is the mean of all profiles
built here (the population mean), section by section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy.stats import beta

from model.config import UserEncoderConfig
from model.glance_encoder import GlanceFeatures

__all__ = [
    "EVENT_COLUMNS",
    "LOGGED_COLUMN",
    "HistoryExposure",
    "UserProfiles",
    "beta_interval_factor",
    "decay_weights",
    "build_user_profiles",
]

logger = logging.getLogger(__name__)

# Columns of the event frame the encoder reads. ``day`` is an integer day number on the same
# origin as ``present_day``, and undated history clicks carry the day before the log starts.
EVENT_COLUMNS = ("user_id", "glance_id", "day", "peek")
# Optional boolean column: False for a click logged without its impression (a history click).
LOGGED_COLUMN = "logged"

# Central 95% interval of the beta posterior.
_LOWER_QUANTILE = 0.025
_UPPER_QUANTILE = 0.975


def beta_interval_factor(peeks: np.ndarray | int, non_peeks: np.ndarray | int) -> np.ndarray:
    """Return ``n = 1 - (F^-1(0.975 | a+1, b+1) - F^-1(0.025 | a+1, b+1))`` per user.

    ``a`` peeks and ``b`` non-peeks enter as ``a + 1`` and ``b + 1``: the posterior of the peek
    rate under a uniform Beta(1, 1) prior. The beta distribution needs both shape parameters
    above 0, so raw counts would fail for users with no peeks (``a = 0``) or no non-peeks
    (``b = 0``). The shift keeps ``n`` defined and continuous in the counts. A user with no
    events gets ``n = 0.05``, and ``n`` approaches 1 as events accumulate.
    """
    a = np.asarray(peeks, dtype=np.float64)
    b = np.asarray(non_peeks, dtype=np.float64)
    if np.any(a < 0) or np.any(b < 0):
        raise ValueError("peek and non-peek counts must not be negative")
    pairs = np.stack(np.broadcast_arrays(a, b), axis=-1).reshape(-1, 2)
    # Many users share a count pair, and ppf is slow, so evaluate each distinct pair once.
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    width = beta.ppf(_UPPER_QUANTILE, unique[:, 0] + 1, unique[:, 1] + 1) - beta.ppf(_LOWER_QUANTILE, unique[:, 0] + 1, unique[:, 1] + 1)
    factor = (1.0 - width)[inverse.reshape(-1)]
    return factor.reshape(np.broadcast(a, b).shape)


def decay_weights(days: np.ndarray, *, present_day: float, window_days: float) -> np.ndarray:
    """Return the recency weights ``exp((t - t_p) / T)`` of events on ``days``."""
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    return np.exp((np.asarray(days, dtype=np.float64) - present_day) / window_days)


@dataclass(frozen=True)
class HistoryExposure:
    """Population figures that turn history clicks into estimated impressions.

    ``peek_rate`` is ``p``, the peek rate of the window's logged impressions, ``meta_mix`` is
    ``e``, the share of those impressions whose glance has each meta value, and
    ``meta_peek_rates`` is ``r``, the smoothed peek rate of each meta value.
    """

    peek_rate: float
    meta_mix: np.ndarray
    meta_peek_rates: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.peek_rate <= 1.0:
            raise ValueError(f"peek_rate must be in (0, 1], got {self.peek_rate}")

    @classmethod
    def from_counts(cls, impressions: np.ndarray, peeks: np.ndarray, glances: GlanceFeatures) -> "HistoryExposure | None":
        """Build it from logged impressions and peeks per glance (row ``i`` is ``glances.ids[i]``).

        Returns None when no logged impression was peeked, since ``p`` must be positive.
        """
        impressions = np.asarray(impressions, dtype=np.float64)
        peeks = np.asarray(peeks, dtype=np.float64)
        if impressions.shape != (len(glances),) or peeks.shape != (len(glances),):
            raise ValueError(f"expected one impression and one peek count per glance ({len(glances)}), got {impressions.shape} and {peeks.shape}")
        total = float(impressions.sum())
        peeked = float(peeks.sum())
        if total <= 0 or peeked <= 0:
            return None
        meta = glances.meta.astype(np.float64)
        value_impressions = impressions @ meta
        rate = peeked / total
        # One pseudo-impression at the overall rate keeps every value's rate above 0, also for
        # values shown but never peeked, and gives values never shown the overall rate.
        value_rates = (peeks @ meta + rate) / (value_impressions + 1.0)
        return cls(peek_rate=rate, meta_mix=value_impressions / total, meta_peek_rates=value_rates)

    def value_rates(self, columns: int) -> np.ndarray:
        """Return ``r``, the population peek rate of each meta value (``p`` when not given)."""
        if self.meta_peek_rates is None:
            return np.full(columns, self.peek_rate)
        if self.meta_peek_rates.shape != (columns,):
            raise ValueError(
                f"population peek rates have {self.meta_peek_rates.shape[0]} meta columns but the glances have {columns}; "
                "build the exposure from the same glance features"
            )
        return self.meta_peek_rates


@dataclass(frozen=True)
class UserProfiles:
    """Profiles of the users with history, row ``i`` belonging to ``ids[i]``, plus the cold start.

    ``peeks`` and ``impressions`` count the events with content that the profile was built from.
    """

    ids: np.ndarray
    meta: np.ndarray
    image: np.ndarray
    text: np.ndarray
    peeks: np.ndarray
    impressions: np.ndarray
    cold_start: Mapping[str, np.ndarray]
    present_day: int = 0
    window_days: float = 1.0
    options: Mapping[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, user_ids: np.ndarray | list[str]) -> np.ndarray:
        """Return the profile row of each user id, or -1 for users without a profile."""
        index = pd.Index(self.ids)
        return index.get_indexer(pd.Index(np.asarray(user_ids, dtype=object)))

    def tables(self) -> dict[str, np.ndarray]:
        """Return the arrays in the layout of ``fmlite.snapshot.write_snapshot``'s users table."""
        return {
            "ids": self.ids,
            "meta": self.meta,
            "image": self.image,
            "text": self.text,
            "peeks": self.peeks,
            "impressions": self.impressions,
        }


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    result = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def build_user_profiles(
    events: pd.DataFrame,
    glances: GlanceFeatures,
    *,
    present_day: int,
    window_days: float,
    config: UserEncoderConfig = UserEncoderConfig(),
    exposure: HistoryExposure | None = None,
) -> UserProfiles:
    """Build the profile of every user with at least one event on a glance that has content.

    ``events`` has the columns of ``EVENT_COLUMNS`` and optionally ``LOGGED_COLUMN``; events on
    glances without content are ignored. ``present_day`` is ``t_p`` and ``window_days`` the
    default ``T``. ``exposure`` defaults to the figures of the logged impressions in ``events``.
    ``peeks`` and ``impressions`` of the result count logged impressions only.
    """
    missing = [column for column in EVENT_COLUMNS if column not in events.columns]
    if missing:
        raise ValueError(f"events frame is missing columns {missing}; required columns are {list(EVENT_COLUMNS)}")
    decay_days = config.decay_days if config.decay_days is not None else window_days

    glance_rows = pd.Index(glances.ids).get_indexer(pd.Index(events["glance_id"].to_numpy(dtype=object)))
    known = glance_rows >= 0
    events = events.loc[known]
    glance_rows = glance_rows[known]
    user_codes, user_ids = pd.factorize(events["user_id"].to_numpy(dtype=object), sort=True)
    labels = events["peek"].to_numpy(dtype=np.float64)
    if LOGGED_COLUMN in events.columns:
        logged = events[LOGGED_COLUMN].to_numpy(dtype=bool)
    else:
        logged = np.ones(len(events), dtype=bool)
    if config.decay:
        weights = decay_weights(events["day"].to_numpy(), present_day=present_day, window_days=decay_days)
    else:
        weights = np.ones(len(events), dtype=np.float64)

    shape = (len(user_ids), len(glances))
    # peeked[u, g] = sum of w * y over u's events on g; the logged_ matrices hold the same sums
    # over logged impressions only (shown: sum of w).
    peeked = sparse.csr_matrix((weights * labels, (user_codes, glance_rows)), shape=shape)
    logged_weights = weights * logged
    logged_shown = sparse.csr_matrix((logged_weights, (user_codes, glance_rows)), shape=shape)
    logged_peeked = sparse.csr_matrix((logged_weights * labels, (user_codes, glance_rows)), shape=shape)

    peeks = np.bincount(user_codes, weights=labels * logged, minlength=len(user_ids)).astype(np.int64)
    impressions = np.bincount(user_codes, weights=logged.astype(np.float64), minlength=len(user_ids)).astype(np.int64)

    meta_glances = glances.meta.astype(np.float64)
    numerator = np.asarray(logged_peeked @ meta_glances)
    denominator = np.asarray(logged_shown @ meta_glances)
    peek_count = peeks.astype(np.float64)
    non_peek_count = (impressions - peeks).astype(np.float64)
    clicks = ~logged & (labels > 0)
    if exposure is None and ((clicks.any() and config.impute_history) or config.meta_log_lift):
        exposure = HistoryExposure.from_counts(
            np.bincount(glance_rows[logged], minlength=len(glances)),
            np.bincount(glance_rows[logged], weights=labels[logged], minlength=len(glances)),
            glances,
        )
    if clicks.any() and config.impute_history:
        if exposure is None:
            logger.warning("no logged impression with a peek in the window: %d history clicks feed text and image only", int(clicks.sum()))
        else:
            click_weight = np.bincount(user_codes, weights=weights * clicks, minlength=len(user_ids))
            click_count = np.bincount(user_codes, weights=clicks.astype(np.float64), minlength=len(user_ids))
            numerator += np.asarray((peeked - logged_peeked) @ meta_glances)
            denominator += (click_weight / exposure.peek_rate)[:, None] * exposure.meta_mix[None, :]
            peek_count += click_count
            non_peek_count += click_count * (1.0 / exposure.peek_rate - 1.0)
    meta_scale = "log_lift" if config.meta_log_lift else "rate"
    if config.meta_log_lift and exposure is None:
        logger.warning("no logged impression with a peek in the window: meta profiles fall back to plain peek rates, since log lifts need population rates")
        meta_scale = "rate_fallback"
    if meta_scale == "log_lift":
        population = exposure.value_rates(numerator.shape[1])
        m = config.meta_prior_impressions
        # Capped at 1 like the plain rate: imputed history clicks can outnumber their impressions.
        shrunk = np.minimum((numerator + m * population[None, :]) / (denominator + m), 1.0)
        rates = np.log(shrunk / population[None, :])
    else:
        rates = np.minimum(_safe_divide(numerator, denominator), 1.0)
    if config.normalize:
        rates *= beta_interval_factor(peek_count, non_peek_count)[:, None]

    peeked_weight = np.asarray(peeked.sum(axis=1)).reshape(-1)
    has_image = glances.has_image.astype(np.float64)
    image_weight = np.asarray(peeked @ has_image).reshape(-1)
    text = _safe_divide(np.asarray(peeked @ glances.text.astype(np.float64)), peeked_weight[:, None])
    image = _safe_divide(np.asarray(peeked @ glances.image.astype(np.float64)), image_weight[:, None])

    meta = rates.astype(np.float32)
    text = text.astype(np.float32)
    image = image.astype(np.float32)
    if len(user_ids):
        cold_start = {"meta": meta.mean(axis=0), "image": image.mean(axis=0), "text": text.mean(axis=0)}
    else:
        cold_start = {
            "meta": np.zeros(glances.meta.shape[1], np.float32),
            "image": np.zeros(glances.image.shape[1], np.float32),
            "text": np.zeros(glances.text.shape[1], np.float32),
        }
    logger.info(
        "built %d user profiles from %d events with content (%d peeks); normalize=%s decay=%s T=%.1f days",
        len(user_ids), len(events), int(peeks.sum()), config.normalize, config.decay, decay_days,
    )
    return UserProfiles(
        ids=np.asarray(user_ids, dtype=object).astype(str),
        meta=meta,
        image=image,
        text=text,
        peeks=peeks,
        impressions=impressions,
        cold_start={section: np.asarray(vector, dtype=np.float32) for section, vector in cold_start.items()},
        present_day=int(present_day),
        window_days=float(decay_days),
        options={
            "normalize": config.normalize,
            "decay": config.decay,
            "decay_days": float(decay_days),
            "impute_history": config.impute_history,
            "meta_scale": meta_scale,
            "meta_prior_impressions": config.meta_prior_impressions,
        },
    )
