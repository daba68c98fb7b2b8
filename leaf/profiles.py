"""In-memory profile cache of a leaf: its shard's users and every glance of one snapshot version.

Lookups never raise for unknown ids: a user without a profile gets the snapshot's cold-start
profile and a glance without a profile is reported in a mask, so the caller can flag it and give
it the fallback score. Rows holding NaN or inf were dropped by the snapshot reader and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fmlite import snapshot
from fmlite.snapshot import FeatureTable, Manifest, SnapshotError

__all__ = ["UserVectors", "ProfileCache", "load_profile_cache"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserVectors:
    """One user's profile sections; ``cold_start`` is True when it is the cold-start profile."""

    meta: np.ndarray
    image: np.ndarray
    text: np.ndarray
    cold_start: bool


@dataclass(frozen=True)
class ProfileCache:
    """Profiles of one snapshot version for one shard."""

    version: str
    shard: int
    manifest: Manifest
    glances: FeatureTable
    users: FeatureTable
    glance_index: dict[str, int]
    user_index: dict[str, int]
    cold_start: UserVectors
    load_seconds: float

    @property
    def fallback_score(self) -> float:
        return self.manifest.fallback_score

    @property
    def rejected_rows(self) -> int:
        return self.glances.rejected + self.users.rejected

    def user(self, user_id: str) -> UserVectors:
        row = self.user_index.get(user_id)
        if row is None:
            return self.cold_start
        users = self.users
        return UserVectors(users.meta[row], users.image[row], users.text[row], cold_start=False)

    def glance_rows(self, glance_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (row numbers, known mask) for ``glance_ids``; unknown ids get row 0 and False."""
        get = self.glance_index.get
        rows = np.fromiter((get(gid, -1) for gid in glance_ids), dtype=np.int64, count=len(glance_ids))
        known = rows >= 0
        rows[~known] = 0
        return rows, known


def load_profile_cache(root: str | Path, *, shard: int, num_shards: int, version: int | None = None) -> ProfileCache:
    """Load the published (or the given) snapshot version under ``root`` for ``shard``."""
    started = time.perf_counter()
    root = Path(root)
    if version is None:
        version = snapshot.current_version(root)
        if version is None:
            raise SnapshotError(f"no published profile snapshot under {root}: {root / 'CURRENT'} is missing")
    directory = root / str(version)
    manifest = snapshot.read_manifest(directory)
    if manifest.num_shards != num_shards:
        raise SnapshotError(
            f"snapshot {directory} is partitioned into {manifest.num_shards} shards; this leaf was started with {num_shards}"
        )
    glances = snapshot.load_glances(directory, manifest)
    if len(glances) == 0:
        raise SnapshotError(f"snapshot {directory} holds no valid glance profile")
    users = snapshot.load_users(directory, shard, manifest)
    cold = manifest.cold_start
    cache = ProfileCache(
        version=str(manifest.version),
        shard=shard,
        manifest=manifest,
        glances=glances,
        users=users,
        glance_index=glances.index(),
        user_index=users.index(),
        cold_start=UserVectors(cold["meta"], cold["image"], cold["text"], cold_start=True),
        load_seconds=time.perf_counter() - started,
    )
    logger.info(
        "loaded profiles version %s shard %d/%d: %d glances, %d users, %d rows rejected, %.2f s",
        cache.version, shard, num_shards, len(glances), len(users), cache.rejected_rows, cache.load_seconds,
    )
    return cache
