"""Seeded simulator of a MIND-format dataset with known ground truth, calibrated to the real sample.

Glances are the real news rows of the MIND-small sample and of the MINDdemo news file (their
two id spaces renumbered as ``N1..Nn``). Each glance is published at a uniformly random time
in ``[-history_days, days)`` days and is live for ``lifetime_hours`` (48 h by default, the
lifetime of most glances on the platform); a logged impression row shows candidates drawn
from the glances live at its hour. Users click with the probabilities of the hidden click model
of ``model.simulator_truth``. As in MIND's logs, a row is kept only when the user clicked at
least one of its candidates.

Calibrated to the real sample (measured by ``model.simulator_calibration``): candidates per
row and history lengths are resampled from the sample's empirical distributions; impression
category mix through per-category sampling weights of the candidates; hour-of-day and weekday
volume from the sample's rows; the intercept and per-category click biases so that the click
rate and the category mix of clicks match (solved on expected values over a calibration
subset of rows). The sample is a random subset of MIND rows, so its rows per user-day say
nothing about user activity: ``sessions_per_user_day`` sets it instead.

Output directory: ``behaviors.tsv``, ``news.tsv``, ``doc_type.json`` (the real sample's files),
``truth.npz`` (the hidden preferences, see ``HiddenPreferences.save``) and ``simulation.json``
(configuration, counts and the calibration table).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.mind import read_mind
from model.simulator_calibration import DatasetStatistics, calibration_rows, dataset_statistics, render_calibration
from model.simulator_content import ContentPool, load_content_pool, text_topics
from model.simulator_truth import TRUTH_FILE, GlanceAttributes, HiddenPreferences, PreferenceScales, sample_preferences
from model.tables import GlanceTable, HistoryTable, InteractionTable, SourceData

__all__ = ["SimulationConfig", "SimulationResult", "SimulationError", "simulate", "SUMMARY_FILE"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "simulation.json"
_FORMATS = ("ar", "vi", "ss")
# Rows used to solve the intercept and category biases; more rows gain little precision.
_CALIBRATION_ROWS = 20_000
_CALIBRATION_ITERATIONS = 30


class SimulationError(ValueError):
    """The simulation settings are invalid or the sources cannot support them."""


@dataclass(frozen=True)
class SimulationConfig:
    """Size, seed and behaviour of a simulated dataset.

    ``sample_dir`` is the real MIND-small sample, measured for calibration and used as content;
    ``extra_content_dirs`` add news rows of other id spaces as content only.
    ``content_limit`` keeps a seeded random subset of that many content rows (small test
    datasets use it to keep text encoding short); None keeps every row.
    """

    sample_dir: Path
    extra_content_dirs: tuple[Path, ...] = ()
    users: int = 20_000
    days: int = 6
    seed: int = 0
    start: dt.date = dt.date(2019, 11, 9)
    history_days: int = 7
    lifetime_hours: float = 48.0
    min_live_glances: int = 300
    sessions_per_user_day: float = 4.0
    activity_shape: float = 1.5
    topics: int = 20
    content_limit: int | None = None
    scales: PreferenceScales = field(default_factory=PreferenceScales)

    def __post_init__(self) -> None:
        checks = (
            ("users", self.users, 1),
            ("days", self.days, 1),
            ("history_days", self.history_days, 1),
            ("min_live_glances", self.min_live_glances, 1),
            ("content_limit", self.content_limit if self.content_limit is not None else 2, 2),
        )
        for name, value, minimum in checks:
            if value < minimum:
                raise SimulationError(f"{name} must be at least {minimum}, got {value}")
        for name in ("lifetime_hours", "sessions_per_user_day", "activity_shape"):
            if getattr(self, name) <= 0:
                raise SimulationError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class SimulationResult:
    """Output directory, measured statistics and calibration table of one simulated dataset."""

    out: Path
    statistics: DatasetStatistics
    sample_statistics: DatasetStatistics
    calibration: list[tuple[str, str, str]]
    seconds: float

    def render(self) -> str:
        return render_calibration(self.calibration)


@dataclass(frozen=True)
class _Catalogue:
    """Published glances: content row, publish hour (relative to the log start) and codes."""

    ids: np.ndarray
    content_rows: np.ndarray
    publish_hours: np.ndarray
    attributes: GlanceAttributes
    category_names: tuple[str, ...]


def _codes(values: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    codes, names = pd.factorize(values, sort=True)
    return codes.astype(np.int64), tuple(str(name) for name in names)


def _publish(content: ContentPool, topics: np.ndarray, config: SimulationConfig, rng: np.random.Generator) -> _Catalogue:
    """Schedule publications over the span so that about ``min_live_glances`` are live at once.

    Every content row is published at least once; when the rows cannot fill the span at the
    minimum live count, rows are published again under new ids (same content).
    """
    span_hours = (config.history_days + config.days) * 24.0
    needed = math.ceil(config.min_live_glances * span_hours / config.lifetime_hours)
    count = max(len(content), needed)
    rows = np.concatenate([rng.permutation(len(content)) for _ in range(math.ceil(count / len(content)))])[:count]
    hours = rng.uniform(-config.history_days * 24.0, config.days * 24.0, size=count)
    order = np.argsort(hours, kind="stable")
    rows, hours = rows[order], hours[order]
    frame = content.frame
    category, category_names = _codes(frame["category"])
    subcategory, _ = _codes(frame["category"] + "/" + frame["subcategory"])
    formats = frame["format"].map({name: index for index, name in enumerate(_FORMATS)}).fillna(len(_FORMATS)).to_numpy(dtype=np.int64)
    attributes = GlanceAttributes(category=category[rows], subcategory=subcategory[rows], format=formats[rows], topics=topics[rows])
    if count > len(content):
        logger.info("published %d glances from %d content rows (rows repeat under new ids)", count, len(content))
    return _Catalogue(
        ids=np.asarray([f"N{index + 1}" for index in range(count)], dtype=object),
        content_rows=rows,
        publish_hours=hours,
        attributes=attributes,
        category_names=category_names,
    )


def _sessions(config: SimulationConfig, sample: DatasetStatistics, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw candidate sessions: (user number, hour since the log start), sorted by time."""
    activity = config.sessions_per_user_day * rng.gamma(config.activity_shape, 1.0 / config.activity_shape, size=config.users)
    hour_weights = sample.hour_weights if sample.hour_weights.sum() > 0 else np.full(24, 1 / 24)
    users, hours = [], []
    for day in range(config.days):
        weekday = (config.start + dt.timedelta(days=day)).weekday()
        factor = sample.weekday_factors.get(weekday, 1.0)
        counts = rng.poisson(activity * factor)
        day_users = np.repeat(np.arange(config.users), counts)
        users.append(day_users)
        hours.append(day * 24.0 + rng.choice(24, size=len(day_users), p=hour_weights) + rng.random(len(day_users)))
    user_array = np.concatenate(users)
    hour_array = np.concatenate(hours)
    order = np.argsort(hour_array, kind="stable")
    return user_array[order], hour_array[order]


def _candidates(
    catalogue: _Catalogue,
    session_hours: np.ndarray,
    counts: np.ndarray,
    category_weights: np.ndarray,
    rng: np.random.Generator,
    *,
    lifetime_hours: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (session index, glance index) pairs: each session's candidates without replacement.

    Candidates come from the glances live at the start of the session's hour, drawn with
    per-category weights (Gumbel top-k), at most as many as are live.
    """
    session_index, glance_index = [], []
    buckets = np.floor(session_hours).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], len(buckets)]
    for start, end in zip(starts, ends):
        hour = float(buckets[start])
        live = np.flatnonzero((catalogue.publish_hours <= hour) & (catalogue.publish_hours + lifetime_hours > hour))
        if len(live) == 0:
            continue
        sessions = np.arange(start, end)
        wanted = np.minimum(counts[sessions], len(live))
        keys = np.log(category_weights[catalogue.attributes.category[live]])[None, :] + rng.gumbel(size=(len(sessions), len(live)))
        order = np.argsort(-keys, axis=1)
        chosen = np.arange(len(live))[None, :] < wanted[:, None]
        session_index.append(np.repeat(sessions, wanted))
        glance_index.append(live[order[chosen]])
    return np.concatenate(session_index), np.concatenate(glance_index)


def _calibrate(
    truth: HiddenPreferences,
    pairs: tuple[np.ndarray, np.ndarray],
    session_users: np.ndarray,
    sample: DatasetStatistics,
    category_names: tuple[str, ...],
) -> HiddenPreferences:
    """Solve the intercept and category biases on expected values of the given rows.

    With p the click probability of each candidate, a row is logged with probability
    1 - prod(1 - p) and contains sum(p) clicks in expectation (rows without a click contain none),
    so the logged click rate is sum(p) / sum(n_row * P(logged)), and the click share of
    category c is the sum of p over its candidates over the sum of all p.
    """
    rows, glances = pairs
    users = session_users[rows]
    raw = truth.with_calibration(base=0.0, category_bias=np.zeros(len(category_names))).logits(users, glances)
    categories = truth.glances.category[glances]
    row_sizes = np.bincount(rows)
    target_rate = sample.click_rate
    target_mix = np.array([sample.click_mix.get(name, np.nan) for name in category_names])
    base = math.log(target_rate / (1 - target_rate))
    bias = np.zeros(len(category_names))
    for _ in range(_CALIBRATION_ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(raw + base + bias[categories])))
        log_none = np.bincount(rows, weights=np.log1p(-np.minimum(p, 1 - 1e-12)), minlength=len(row_sizes))
        logged = 1.0 - np.exp(log_none)
        rate = p.sum() / max((row_sizes * logged).sum(), 1e-12)
        mix = np.bincount(categories, weights=p, minlength=len(category_names)) / p.sum()
        known = np.isfinite(target_mix) & (target_mix > 0) & (mix > 0)
        bias[known] += 0.8 * np.log(target_mix[known] / mix[known])
        bias -= np.average(bias, weights=np.bincount(categories, minlength=len(category_names)) + 1e-9)
        base += 0.8 * (math.log(target_rate / (1 - target_rate)) - math.log(rate / (1 - rate)))
    logger.info("calibrated intercept %.3f; logged click rate %.4f (target %.4f)", base, rate, target_rate)
    return truth.with_calibration(base=base, category_bias=bias)


def _row_sizes(
    truth: HiddenPreferences,
    pairs: tuple[np.ndarray, np.ndarray],
    row_users: np.ndarray,
    logged_sizes: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``count`` row sizes whose logged rows follow the empirical ``logged_sizes``.

    A row of n candidates is logged with probability P(n) = 1 - prod(1 - p), so sizes are
    drawn with probability proportional to empirical(n) / P(n). P(n) is fitted on the pilot
    rows as 1 - (1 + n r / k)^(-k), the chance of a click in n trials when the click rate r
    varies between rows as a Gamma distribution of shape k (a grid search over r and k).
    """
    rows, glances = pairs
    p = truth.probabilities(row_users[rows], glances)
    logged = 1.0 - np.exp(np.bincount(rows, weights=np.log1p(-np.minimum(p, 1 - 1e-12))))
    sizes = np.bincount(rows).astype(np.float64)
    best = (np.inf, 0.0, 1.0)
    for rate in np.geomspace(1e-3, 0.3, 60):
        for shape in (0.3, 0.5, 1.0, 2.0, 4.0, 1e3):
            fitted = 1.0 - (1.0 + sizes * rate / shape) ** (-shape)
            error = float(((fitted - logged) ** 2).sum())
            if error < best[0]:
                best = (error, rate, shape)
    _, rate, shape = best
    values, frequencies = np.unique(logged_sizes, return_counts=True)
    keep = 1.0 - (1.0 + values * rate / shape) ** (-shape)
    weights = frequencies / np.maximum(keep, 1e-6)
    logger.info("row-size correction: P(logged | n) = 1 - (1 + n * %.4f / %.1f)^-%.1f", rate, shape, shape)
    return rng.choice(values, size=count, p=weights / weights.sum())


def _history(
    truth: HiddenPreferences,
    catalogue: _Catalogue,
    lengths: np.ndarray,
    category_weights: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (user, glance) history clicks on glances published before the log.

    A glance enters a user's history with weight ``w_c * p(u, g)``: the chance that it is shown
    (the candidate weight of its category) times the chance that it is clicked, so history
    clicks follow the same exposure as logged clicks.
    """
    pool = np.flatnonzero(catalogue.publish_hours < 0)
    if len(pool) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = np.minimum(lengths, len(pool) // 2)
    users_out, glances_out = [], []
    chunk = max(1, 2_000_000 // len(pool))
    for start in range(0, len(lengths), chunk):
        users = np.arange(start, min(start + chunk, len(lengths)))
        grid_users = np.repeat(users, len(pool))
        grid_glances = np.tile(pool, len(users))
        log_p = -np.logaddexp(0.0, -truth.logits(grid_users, grid_glances)).reshape(len(users), len(pool))
        log_p += np.log(category_weights[catalogue.attributes.category[pool]])[None, :]
        # Gumbel top-k draws each user's clicks without replacement, proportional to the weight.
        order = np.argsort(-(log_p + rng.gumbel(size=log_p.shape)), axis=1)
        chosen = np.arange(len(pool))[None, :] < lengths[users][:, None]
        users_out.append(np.repeat(users, lengths[users]))
        glances_out.append(pool[order[chosen]])
    return np.concatenate(users_out), np.concatenate(glances_out)


def _format_times(origin: dt.datetime, hours: np.ndarray) -> list[str]:
    """Format hours after ``origin`` as MIND's ``M/D/YYYY h:mm:ss AM``."""
    stamps = pd.Timestamp(origin) + pd.to_timedelta(np.floor(hours * 3600.0).astype(np.int64), unit="s")
    texts = []
    for stamp in stamps:
        hour12 = stamp.hour % 12 or 12
        suffix = "AM" if stamp.hour < 12 else "PM"
        texts.append(f"{stamp.month}/{stamp.day}/{stamp.year} {hour12}:{stamp.minute:02d}:{stamp.second:02d} {suffix}")
    return texts


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _glance_table(content: ContentPool, catalogue: _Catalogue) -> GlanceTable:
    frame = content.frame.iloc[catalogue.content_rows].reset_index(drop=True)
    frame = frame.drop(columns=["source"])
    frame.insert(0, "glance_id", catalogue.ids)
    return GlanceTable(frame)


def _write_news(out: Path, glances: GlanceTable) -> None:
    frame = glances.frame
    keys = [f"SIM{index + 1}" for index in range(len(frame))]
    lines = [
        "\t".join((gid, category, subcategory, title, abstract, f"https://assets.msn.com/labs/mind/{key}.html", "[]", "[]"))
        for gid, category, subcategory, title, abstract, key in zip(
            frame["glance_id"], frame["category"], frame["subcategory"], frame["title"], frame["abstract"], keys
        )
    ]
    _write_atomic(out / "news.tsv", "\n".join(lines) + "\n")
    doc_types = {key: fmt for key, fmt in zip(keys, frame["format"]) if fmt in _FORMATS}
    _write_atomic(out / "doc_type.json", json.dumps(doc_types, indent=0))


def simulate(config: SimulationConfig, out: str | os.PathLike[str]) -> SimulationResult:
    """Generate and write the dataset of ``config`` to ``out``; return its calibration table."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)

    sample = read_mind(config.sample_dir)
    sample_stats = dataset_statistics(sample)
    content = load_content_pool([config.sample_dir, *config.extra_content_dirs])
    if config.content_limit is not None and config.content_limit < len(content):
        keep = np.sort(rng.choice(len(content), config.content_limit, replace=False))
        content = ContentPool(content.frame.iloc[keep].reset_index(drop=True))
    topics = text_topics(content.texts(), topics=config.topics, seed=config.seed)
    catalogue = _publish(content, topics, config, rng)
    attributes = catalogue.attributes
    truth = sample_preferences(
        rng,
        users=config.users,
        glances=attributes,
        categories=len(catalogue.category_names),
        subcategories=int(attributes.subcategory.max()) + 1,
        formats=len(_FORMATS) + 1,
        scales=config.scales,
    )

    session_users, session_hours = _sessions(config, sample_stats, rng)
    if len(session_users) == 0:
        raise SimulationError(f"{config.users} users with {config.sessions_per_user_day} sessions per day produced no session")
    content_share = np.bincount(attributes.category, minlength=len(catalogue.category_names)).astype(np.float64)
    content_share /= content_share.sum()
    impression_target = np.array([sample_stats.impression_mix.get(name, 0.0) for name in catalogue.category_names])
    # Categories the sample never showed keep their content share (weight 1).
    category_weights = np.where(impression_target > 0, impression_target / np.maximum(content_share, 1e-12), 1.0)

    # Pilot: calibrate on rows whose sizes follow the sample, then learn how the size of a row
    # changes its chance to hold a click, and draw the real sizes so that the logged rows
    # (those with a click) follow the sample's distribution.
    pilot = np.sort(rng.choice(len(session_users), min(_CALIBRATION_ROWS, len(session_users)), replace=False))
    pilot_counts = rng.choice(sample_stats.candidates, size=len(pilot))
    pilot_rows, pilot_glances = _candidates(
        catalogue, session_hours[pilot], pilot_counts, category_weights, rng, lifetime_hours=config.lifetime_hours
    )
    truth = _calibrate(truth, (pilot_rows, pilot_glances), session_users[pilot], sample_stats, catalogue.category_names)
    counts = _row_sizes(truth, (pilot_rows, pilot_glances), session_users[pilot], sample_stats.candidates, len(session_users), rng)
    rows, glances = _candidates(catalogue, session_hours, counts, category_weights, rng, lifetime_hours=config.lifetime_hours)
    subset = np.isin(rows, pilot)
    _, compact_rows = np.unique(rows[subset], return_inverse=True)
    truth = _calibrate(
        truth,
        (compact_rows, glances[subset]),
        _row_users(session_users, rows[subset], compact_rows),
        sample_stats,
        catalogue.category_names,
    )

    labels = (rng.random(len(rows)) < truth.probabilities(session_users[rows], glances)).astype(np.int8)
    clicks_per_session = np.bincount(rows, weights=labels, minlength=len(session_users))
    kept_sessions = np.flatnonzero(clicks_per_session > 0)
    keep = clicks_per_session[rows] > 0
    rows, glances, labels = rows[keep], glances[keep], labels[keep]
    impression_ids = np.searchsorted(kept_sessions, rows) + 1

    history_lengths = rng.choice(sample_stats.history_lengths, size=config.users)
    history_users, history_glances = _history(truth, catalogue, history_lengths, category_weights, rng)

    user_ids = np.asarray([f"U{index + 1}" for index in range(config.users)], dtype=object)
    origin = dt.datetime.combine(config.start, dt.time())
    glance_table = _glance_table(content, catalogue)
    _write_news(out, glance_table)
    _write_behaviors(out, kept_sessions, session_users, session_hours, impression_ids, glances, labels, history_users, history_glances, user_ids, catalogue.ids, origin)
    truth.save(out / TRUTH_FILE, user_ids=user_ids, glance_ids=catalogue.ids.astype(str))

    simulated = SourceData(
        glances=glance_table,
        interactions=InteractionTable(
            pd.DataFrame(
                {
                    "impression_id": impression_ids,
                    "user_id": user_ids[session_users[rows]],
                    "glance_id": catalogue.ids[glances],
                    "timestamp": pd.Timestamp(origin) + pd.to_timedelta(np.floor(session_hours[rows] * 3600).astype(np.int64), unit="s"),
                    "peek": labels,
                }
            )
        ),
        history=HistoryTable(pd.DataFrame({"user_id": user_ids[history_users], "glance_id": catalogue.ids[history_glances]})),
    )
    simulated_stats = dataset_statistics(simulated)
    table = calibration_rows(sample_stats, simulated_stats)
    seconds = time.perf_counter() - started
    summary = {
        "config": _json_ready(dataclasses.asdict(config)),
        "counts": {
            "users": config.users,
            "users_logged": simulated_stats.users,
            "impression_rows": simulated_stats.rows,
            "impressions": simulated_stats.impressions,
            "clicks": int(labels.sum()),
            "history_clicks": int(len(history_users)),
            "glances": int(len(catalogue.ids)),
            "content_rows": int(len(content)),
            "sessions_before_click_filter": int(len(session_users)),
        },
        "calibration": [{"figure": figure, "sample": real, "simulated": simulated_value} for figure, real, simulated_value in table],
        "truth": {
            "base": truth.base,
            "category_bias": {name: float(value) for name, value in zip(catalogue.category_names, truth.category_bias)},
        },
        "seconds": round(seconds, 2),
    }
    _write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1))
    logger.info("simulated %d rows for %d users in %.1f s into %s", simulated_stats.rows, simulated_stats.users, seconds, out)
    return SimulationResult(out=out, statistics=simulated_stats, sample_statistics=sample_stats, calibration=table, seconds=seconds)


def _row_users(session_users: np.ndarray, rows: np.ndarray, compact_rows: np.ndarray) -> np.ndarray:
    """Return the user of each compact row number (rows renumbered 0..k-1 in order)."""
    users = np.empty(int(compact_rows.max()) + 1 if len(compact_rows) else 0, dtype=np.int64)
    users[compact_rows] = session_users[rows]
    return users


def _write_behaviors(
    out: Path,
    kept_sessions: np.ndarray,
    session_users: np.ndarray,
    session_hours: np.ndarray,
    impression_ids: np.ndarray,
    glances: np.ndarray,
    labels: np.ndarray,
    history_users: np.ndarray,
    history_glances: np.ndarray,
    user_ids: np.ndarray,
    glance_ids: np.ndarray,
    origin: dt.datetime,
) -> None:
    order = np.argsort(history_users, kind="stable")
    history_users, history_glances = history_users[order], history_glances[order]
    bounds = np.searchsorted(history_users, np.arange(len(user_ids) + 1))
    history_text = [" ".join(glance_ids[history_glances[bounds[u] : bounds[u + 1]]]) for u in range(len(user_ids))]
    tokens = [f"{gid}-{label}" for gid, label in zip(glance_ids[glances].tolist(), labels.tolist())]
    starts = np.searchsorted(impression_ids, np.arange(1, len(kept_sessions) + 2))
    times = _format_times(origin, session_hours[kept_sessions])
    lines = []
    for number, session in enumerate(kept_sessions):
        user = int(session_users[session])
        candidates = " ".join(tokens[starts[number] : starts[number + 1]])
        lines.append(f"{number + 1}\t{user_ids[user]}\t{times[number]}\t{history_text[user]}\t{candidates}")
    _write_atomic(out / "behaviors.tsv", "\n".join(lines) + "\n")


def _json_ready(value: object) -> object:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (Path, dt.date)):
        return str(value)
    return value
