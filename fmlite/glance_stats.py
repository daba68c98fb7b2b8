"""Glance statistics: when each glance was first shown and how often it was shown and peeked.

L0's exploration policies (``controller.explore``) read them to find fresh and little-shown
glances. The file is ``glance_stats.npz`` (NumPy arrays, no pickle), written by the release
(``fmlite.release``) into the profile snapshot directory before the snapshot is published, so
``<profiles>/<version>/glance_stats.npz`` describes the same log as the profiles of that version.
Another job may also write a file of its own more often (for example hourly, from the request
log); ``write_glance_stats`` replaces it atomically and L0 reloads it when it changes.

Arrays:

- ``ids``: glance ids, unique;
- ``first_seen_ms``: Unix time in milliseconds of the glance's first logged impression;
- ``impressions`` and ``peeks``: logged impressions and peeks up to ``as_of_ms``;
- ``version`` (a string) and ``as_of_ms``: the statistics' version and the end of the log they count.

A glance that was known when the statistics were built but has no logged impression (a
snapshot glance never shown) gets a row with ``first_seen_ms = as_of_ms`` and no impressions. A
glance without a row appeared after ``as_of_ms``: the policies treat it as brand new (age 0, no
impressions).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "STATS_FILE",
    "FORMAT_VERSION",
    "GlanceStatsError",
    "GlanceStats",
    "build_glance_stats",
    "write_glance_stats",
    "read_glance_stats",
    "resolve_stats_path",
]

logger = logging.getLogger(__name__)

STATS_FILE = "glance_stats.npz"
FORMAT_VERSION = 1
_ARRAYS = ("ids", "first_seen_ms", "impressions", "peeks")


class GlanceStatsError(Exception):
    """A glance statistics file is missing, malformed, or its values break the format."""


@dataclass(frozen=True)
class GlanceStats:
    """Per-glance first-seen time and counts, with an index from glance id to row."""

    version: str
    as_of_ms: int
    ids: np.ndarray
    first_seen_ms: np.ndarray
    impressions: np.ndarray
    peeks: np.ndarray
    index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            object.__setattr__(self, "index", {str(key): row for row, key in enumerate(self.ids.tolist())})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def prior_peek_rate(self) -> float:
        """Return the pooled peek rate of every glance (peeks over impressions), or 0.05 without impressions."""
        impressions = int(self.impressions.sum())
        if impressions == 0:
            return 0.05
        return float(self.peeks.sum()) / impressions

    def lookup(self, glance_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (row numbers, known mask) of ``glance_ids``; unknown ids get row 0 and False."""
        get = self.index.get
        rows = np.fromiter((get(gid, -1) for gid in glance_ids), dtype=np.int64, count=len(glance_ids))
        known = rows >= 0
        rows[~known] = 0
        return rows, known

    def ages_hours(self, glance_ids: Sequence[str], *, now_ms: int) -> np.ndarray:
        """Return each glance's hours since its first impression at ``now_ms``; 0 for a glance without a row."""
        rows, known = self.lookup(glance_ids)
        if not len(self.ids):
            return np.zeros(len(glance_ids))
        ages = (now_ms - self.first_seen_ms[rows]) / 3_600_000.0
        return np.where(known, np.maximum(ages, 0.0), 0.0)

    def counts(self, glance_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (impressions, peeks) of each glance; 0 for a glance without a row."""
        rows, known = self.lookup(glance_ids)
        if not len(self.ids):
            zeros = np.zeros(len(glance_ids), dtype=np.int64)
            return zeros, zeros.copy()
        return np.where(known, self.impressions[rows], 0), np.where(known, self.peeks[rows], 0)


def _check(stats: GlanceStats, where: str) -> GlanceStats:
    count = len(stats.ids)
    for name in _ARRAYS[1:]:
        array = getattr(stats, name)
        if array.shape != (count,):
            raise GlanceStatsError(f"{where}: {name} has shape {array.shape}, expected ({count},) like ids")
    if len(stats.index) != count:
        raise GlanceStatsError(f"{where}: glance ids are not unique ({count} rows, {len(stats.index)} distinct ids)")
    if count and (stats.impressions.min() < 0 or stats.peeks.min() < 0):
        raise GlanceStatsError(f"{where}: impressions and peeks must not be negative")
    if count and np.any(stats.peeks > stats.impressions):
        bad = stats.ids[stats.peeks > stats.impressions][:3].tolist()
        raise GlanceStatsError(f"{where}: peeks exceed impressions for glances {bad}")
    if count and stats.first_seen_ms.max() > stats.as_of_ms:
        raise GlanceStatsError(f"{where}: a first_seen_ms lies after as_of_ms {stats.as_of_ms}")
    return stats


def build_glance_stats(
    glance_ids: Sequence[str] | np.ndarray,
    times_ms: Sequence[int] | np.ndarray,
    peeks: Sequence[int] | np.ndarray,
    *,
    as_of_ms: int,
    version: str,
    known_ids: Sequence[str] | np.ndarray = (),
) -> GlanceStats:
    """Count a log of impressions (one row per glance shown) into statistics up to ``as_of_ms``.

    Impressions at or after ``as_of_ms`` are left out, so the statistics describe only what was
    known when they were published. ``known_ids`` (for example the snapshot's glances) get a row
    with no impressions and ``first_seen_ms = as_of_ms`` when the log does not show them.
    """
    glance_ids = np.asarray(glance_ids).astype(str)
    times_ms = np.asarray(times_ms, dtype=np.int64)
    peeks = np.asarray(peeks, dtype=np.int64)
    if not glance_ids.shape == times_ms.shape == peeks.shape:
        raise GlanceStatsError(f"glance_ids, times_ms and peeks differ in shape: {glance_ids.shape}, {times_ms.shape}, {peeks.shape}")
    before = times_ms < as_of_ms
    unseen = np.setdiff1d(np.asarray(known_ids).astype(str), glance_ids[before])
    glance_ids = np.concatenate([glance_ids[before], unseen])
    times_ms = np.concatenate([times_ms[before], np.full(len(unseen), as_of_ms, dtype=np.int64)])
    shown = np.concatenate([np.ones(int(before.sum()), dtype=np.int64), np.zeros(len(unseen), dtype=np.int64)])
    peeks = np.concatenate([peeks[before], np.zeros(len(unseen), dtype=np.int64)])
    unique, codes = np.unique(glance_ids, return_inverse=True)
    first_seen = np.full(len(unique), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, codes, times_ms)
    stats = GlanceStats(
        version=version,
        as_of_ms=int(as_of_ms),
        ids=unique,
        first_seen_ms=first_seen,
        impressions=np.bincount(codes, weights=shown, minlength=len(unique)).astype(np.int64),
        peeks=np.bincount(codes, weights=(peeks > 0).astype(np.int64), minlength=len(unique)).astype(np.int64),
    )
    return _check(stats, "built statistics")


def write_glance_stats(path: str | os.PathLike[str], stats: GlanceStats) -> Path:
    """Write ``stats`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    _check(stats, str(path))
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.npz")
    np.savez(
        temporary,
        format_version=np.int64(FORMAT_VERSION),
        version=np.array(stats.version),
        as_of_ms=np.int64(stats.as_of_ms),
        ids=np.asarray(stats.ids).astype(str),
        first_seen_ms=stats.first_seen_ms.astype(np.int64),
        impressions=stats.impressions.astype(np.int64),
        peeks=stats.peeks.astype(np.int64),
    )
    os.replace(temporary, path)
    logger.info("wrote glance statistics %s: %d glances as of %d ms", path, len(stats), stats.as_of_ms)
    return path


def read_glance_stats(path: str | os.PathLike[str]) -> GlanceStats:
    """Read and check a file written by ``write_glance_stats``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise GlanceStatsError(f"glance statistics not found: {path}") from None
    except (OSError, ValueError) as error:
        raise GlanceStatsError(f"glance statistics {path} are not a readable .npz file: {error}") from None
    missing = [name for name in ("format_version", "version", "as_of_ms", *_ARRAYS) if name not in arrays]
    if missing:
        raise GlanceStatsError(f"glance statistics {path} lack the arrays {missing}")
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise GlanceStatsError(f"glance statistics {path} have format_version {int(arrays['format_version'])}; this reader supports {FORMAT_VERSION}")
    stats = GlanceStats(
        version=str(arrays["version"]),
        as_of_ms=int(arrays["as_of_ms"]),
        ids=arrays["ids"].astype(str),
        first_seen_ms=arrays["first_seen_ms"].astype(np.int64),
        impressions=arrays["impressions"].astype(np.int64),
        peeks=arrays["peeks"].astype(np.int64),
    )
    return _check(stats, str(path))


def resolve_stats_path(location: str | os.PathLike[str]) -> Path:
    """Return the statistics file that ``location`` names now.

    ``location`` is a statistics file, or a profile snapshot root: then the file of the version
    that ``<root>/CURRENT`` names.
    """
    location = Path(location)
    pointer = location / "CURRENT"
    if location.is_dir():
        try:
            version = pointer.read_text().strip()
        except FileNotFoundError:
            raise GlanceStatsError(f"{location} is a directory without CURRENT; pass a statistics file or a profile snapshot root") from None
        if not version.isdigit():
            raise GlanceStatsError(f"{pointer} must hold a version number, found {version!r}")
        return location / version / STATS_FILE
    return location
