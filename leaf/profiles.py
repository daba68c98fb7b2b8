"""Profiles a leaf scores with: every glance and its shard's users, of one snapshot version.

Lookups never raise for unknown ids. A glance without a profile is reported in a mask, so the
caller can flag it and give it the fallback score. A user lookup returns the user's vectors, the
cold-start profile when the version has no profile for the user, or None when the user is not
held locally and the profile store must be asked (only a bounded cache of a Redis store is
incomplete). Rows holding NaN or inf were dropped at load and counted.

``FileProfileSource`` reads file snapshots (``fmlite.snapshot``), the embedded default;
``leaf.store.RedisProfileSource`` reads the Redis profile store. Both give the reloader the
published version and a loaded ``ProfileCache``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Hashable, Protocol, Sequence

import numpy as np

from fmlite import snapshot
from fmlite.snapshot import FeatureTable, Manifest, SnapshotError
from leaf.cache import UserCache

__all__ = [
    "COLD_START_KEY",
    "UserVectors",
    "cold_start_vectors",
    "UserTable",
    "SnapshotUsers",
    "CachedUsers",
    "ProfileCache",
    "ProfileSource",
    "FileProfileSource",
    "load_profile_cache",
]

logger = logging.getLogger(__name__)

# ``UserVectors.key`` of the cold-start profile. A tuple never equals a user id, which is a str.
COLD_START_KEY = ("cold start",)


@dataclass(frozen=True)
class UserVectors:
    """One user's profile sections; ``cold_start`` is True when it is the cold-start profile.

    ``key`` identifies these vectors within one loaded profile version: the user id, or
    ``COLD_START_KEY``. Runners may cache values derived from the vectors under it for as long
    as they are bound to that version. None means "do not cache", for vectors whose origin the
    lookup cannot vouch for.
    """

    meta: np.ndarray
    image: np.ndarray
    text: np.ndarray
    cold_start: bool
    key: Hashable | None = None


class UserTable(Protocol):
    """The users of one shard and version that a leaf keeps in memory."""

    # True when every user of the shard and version is in memory, so a miss means "no profile".
    complete: bool
    # Rows dropped at load because they held NaN or inf.
    rejected: int

    def __len__(self) -> int: ...

    def lookup(self, user_id: str) -> UserVectors | None:
        """Return the user's vectors, or None when the user is not in memory."""
        ...


class SnapshotUsers:
    """Every user of one shard of a file snapshot."""

    complete = True

    def __init__(self, table: FeatureTable):
        self.table = table
        self.index = table.index()
        self.rejected = table.rejected

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, user_id: str) -> UserVectors | None:
        row = self.index.get(user_id)
        if row is None:
            return None
        table = self.table
        return UserVectors(table.meta[row], table.image[row], table.text[row], cold_start=False, key=user_id)


class CachedUsers:
    """Users of one shard kept in a bounded ``UserCache`` in front of the profile store."""

    def __init__(self, cache: UserCache, *, rejected: int = 0):
        self.cache = cache
        self.rejected = rejected

    @property
    def complete(self) -> bool:
        return self.cache.complete

    def __len__(self) -> int:
        return len(self.cache)

    def lookup(self, user_id: str) -> UserVectors | None:
        found = self.cache.get(user_id)
        if found is None:
            return None
        # Rows of one profile version never change in the store, so the id is a valid key.
        return UserVectors(*found, cold_start=False, key=user_id)


@dataclass(frozen=True)
class ProfileCache:
    """Profiles of one snapshot version for one shard; ``source`` is ``files`` or ``redis``."""

    version: str
    shard: int
    manifest: Manifest
    glances: FeatureTable
    glance_index: dict[str, int]
    users: UserTable
    cold_start: UserVectors
    load_seconds: float
    source: str = "files"

    @property
    def fallback_score(self) -> float:
        return self.manifest.fallback_score

    @property
    def rejected_rows(self) -> int:
        return self.glances.rejected + self.users.rejected

    def user(self, user_id: str) -> UserVectors | None:
        """Return the user's vectors, the cold-start profile, or None when the store must be called."""
        found = self.users.lookup(user_id)
        if found is not None:
            return found
        return self.cold_start if self.users.complete else None

    def glance_rows(self, glance_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (row numbers, known mask) for ``glance_ids``; unknown ids get row 0 and False."""
        # One C-level pass: map() calls dict.get without a Python frame per id.
        count = len(glance_ids)
        rows = np.fromiter(map(self.glance_index.get, glance_ids, repeat(-1, count)), dtype=np.int64, count=count)
        known = rows >= 0
        if not known.all():
            rows[~known] = 0
        return rows, known


def cold_start_vectors(manifest: Manifest) -> UserVectors:
    """Return the snapshot's cold-start profile as user vectors."""
    cold = manifest.cold_start
    return UserVectors(cold["meta"], cold["image"], cold["text"], cold_start=True, key=COLD_START_KEY)


def load_profile_cache(root: str | Path, *, shard: int, num_shards: int, version: int | None = None) -> ProfileCache:
    """Load the published (or the given) file snapshot version under ``root`` for ``shard``."""
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
        raise SnapshotError(f"snapshot {directory} contains no valid glance profile")
    users = SnapshotUsers(snapshot.load_users(directory, shard, manifest))
    cache = ProfileCache(
        version=str(manifest.version),
        shard=shard,
        manifest=manifest,
        glances=glances,
        glance_index=glances.index(),
        users=users,
        cold_start=cold_start_vectors(manifest),
        load_seconds=time.perf_counter() - started,
        source="files",
    )
    logger.info(
        "loaded profiles version %s shard %d/%d from %s: %d glances, %d users, %d rows rejected, %.2f s",
        cache.version, shard, num_shards, directory, len(glances), len(users), cache.rejected_rows, cache.load_seconds,
    )
    return cache


class ProfileSource(Protocol):
    """Origin of a leaf's profiles: the published version and a loader for it."""

    # "files" or "redis", for logs, health details and metrics.
    kind: str

    def published_version(self) -> int | None:
        """Return the published version; raise when the source cannot be read right now."""
        ...

    def load(self, version: int, *, previous: ProfileCache | None) -> ProfileCache:
        """Load ``version``; ``previous`` names the users worth keeping hot."""
        ...


class FileProfileSource:
    """File snapshots under ``root`` (``<root>/CURRENT`` and ``<root>/<version>/``)."""

    kind = "files"

    def __init__(self, root: str | Path, *, shard: int, num_shards: int):
        self.root = Path(root)
        self.shard = shard
        self.num_shards = num_shards

    def published_version(self) -> int | None:
        return snapshot.current_version(self.root)

    def load(self, version: int, *, previous: ProfileCache | None = None) -> ProfileCache:
        return load_profile_cache(self.root, shard=self.shard, num_shards=self.num_shards, version=version)
