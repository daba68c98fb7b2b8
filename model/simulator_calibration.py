"""Statistics of a MIND-format dataset that the simulator calibrates to, and their side-by-side table.

The same ``dataset_statistics`` measures the real sample and a simulated dataset, so the
calibration table compares like with like. Figures:

- click rate: peeked impressions over all impressions (one impression = one candidate shown);
- candidates per impression and clicks per impression (one impression row of behaviors.tsv);
- history length: clicks in the history column per user, 0 for a user without history;
- category mix of the content, of impressions with content and of clicks with content
  (history clicks and logged clicks);
- hour-of-day and weekday volume of impression rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model.tables import SourceData

__all__ = ["DatasetStatistics", "dataset_statistics", "calibration_rows", "render_calibration"]


@dataclass(frozen=True)
class DatasetStatistics:
    """Summary of one dataset; the arrays are empirical distributions the simulator resamples."""

    rows: int
    users: int
    impressions: int
    click_rate: float
    candidates: np.ndarray
    clicks_per_row: np.ndarray
    history_lengths: np.ndarray
    content_mix: dict[str, float]
    impression_mix: dict[str, float]
    click_mix: dict[str, float]
    hour_weights: np.ndarray
    weekday_factors: dict[int, float] = field(default_factory=dict)
    rows_per_user_day: float = 0.0


def _shares(values: pd.Series) -> dict[str, float]:
    counts = values.value_counts()
    total = counts.sum()
    return {str(key): float(count / total) for key, count in counts.items()} if total else {}


def dataset_statistics(source: SourceData) -> DatasetStatistics:
    """Measure ``source`` (the tables of ``model.mind.read_mind`` or of the simulator)."""
    frame = source.interactions.frame
    rows = frame.groupby("impression_id", sort=False).agg(
        candidates=("peek", "size"), clicks=("peek", "sum"), user_id=("user_id", "first"), timestamp=("timestamp", "first")
    )
    users = frame["user_id"].unique()
    history_counts = source.history.frame.groupby("user_id").size()
    history_lengths = history_counts.reindex(users, fill_value=0).to_numpy(dtype=np.int64)

    glances = source.glances.frame.set_index("glance_id")
    category = glances["category"]
    impressed = frame["glance_id"].map(category)
    clicked_log = frame.loc[frame["peek"] == 1, "glance_id"].map(category)
    clicked_history = source.history.frame["glance_id"].map(category)
    clicks = pd.concat([clicked_log, clicked_history]).dropna()

    hours = rows["timestamp"].dt.hour.to_numpy()
    hour_weights = np.bincount(hours, minlength=24).astype(np.float64)
    hour_weights /= max(hour_weights.sum(), 1.0)
    days = rows["timestamp"].dt.normalize()
    per_day = days.value_counts()
    weekday_totals: dict[int, list[float]] = {}
    for day, count in per_day.items():
        weekday_totals.setdefault(int(day.weekday()), []).append(float(count))
    mean_per_day = float(per_day.mean()) if len(per_day) else 0.0
    weekday_factors = {weekday: float(np.mean(counts) / mean_per_day) for weekday, counts in weekday_totals.items()} if mean_per_day else {}
    user_days = frame.assign(day=frame["timestamp"].dt.normalize()).groupby(["user_id", "day"]).ngroups

    return DatasetStatistics(
        rows=len(rows),
        users=len(users),
        impressions=len(frame),
        click_rate=float(frame["peek"].mean()) if len(frame) else float("nan"),
        candidates=rows["candidates"].to_numpy(dtype=np.int64),
        clicks_per_row=rows["clicks"].to_numpy(dtype=np.int64),
        history_lengths=history_lengths,
        content_mix=_shares(glances["category"]),
        impression_mix=_shares(impressed.dropna()),
        click_mix=_shares(clicks),
        hour_weights=hour_weights,
        weekday_factors=weekday_factors,
        rows_per_user_day=float(len(rows) / user_days) if user_days else float("nan"),
    )


def _top_categories(sample: DatasetStatistics, count: int) -> list[str]:
    return sorted(sample.click_mix, key=lambda name: -sample.click_mix[name])[:count]


def calibration_rows(sample: DatasetStatistics, simulated: DatasetStatistics, *, categories: int = 6) -> list[tuple[str, str, str]]:
    """Return ``(figure, sample, simulated)`` rows, formatted, for the calibration table."""

    def describe(values: np.ndarray) -> str:
        if len(values) == 0:
            return "n/a"
        return f"median {np.median(values):.0f}, mean {values.mean():.1f}, p90 {np.percentile(values, 90):.0f}"

    rows = [
        ("users", f"{sample.users:,}", f"{simulated.users:,}"),
        ("impression rows", f"{sample.rows:,}", f"{simulated.rows:,}"),
        ("impressions (candidates shown)", f"{sample.impressions:,}", f"{simulated.impressions:,}"),
        ("click rate", f"{sample.click_rate:.2%}", f"{simulated.click_rate:.2%}"),
        ("candidates per row", describe(sample.candidates), describe(simulated.candidates)),
        ("clicks per row", f"mean {sample.clicks_per_row.mean():.2f}", f"mean {simulated.clicks_per_row.mean():.2f}"),
        ("history length per user", describe(sample.history_lengths), describe(simulated.history_lengths)),
        ("rows per active user-day", f"{sample.rows_per_user_day:.2f}", f"{simulated.rows_per_user_day:.2f}"),
    ]
    for name in _top_categories(sample, categories):
        rows.append(
            (
                f"category {name}: content / impressions / clicks",
                f"{sample.content_mix.get(name, 0):.1%} / {sample.impression_mix.get(name, 0):.1%} / {sample.click_mix.get(name, 0):.1%}",
                f"{simulated.content_mix.get(name, 0):.1%} / {simulated.impression_mix.get(name, 0):.1%} / {simulated.click_mix.get(name, 0):.1%}",
            )
        )
    morning_sample = float(sample.hour_weights[6:12].sum())
    morning_simulated = float(simulated.hour_weights[6:12].sum())
    rows.append(("rows from 06:00 to 11:59", f"{morning_sample:.1%}", f"{morning_simulated:.1%}"))
    return rows


def render_calibration(rows: list[tuple[str, str, str]]) -> str:
    """Return the calibration rows as an aligned plain-text table."""
    header = ("figure", "real sample", "simulated")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
