"""Requests drawn from the trained artifacts: real user ids and glance ids of the published snapshot.

Every load generator of ``loadtest`` takes its requests from here, so the platform is driven with
ids it has profiles for: no unknown glances and no cold-start users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from fmlite import snapshot
from fmlite.snapshot import FeatureTable, Manifest

__all__ = ["WorkloadError", "Workload", "load_workload", "DEFAULT_GLANCES_PER_REQUEST"]

logger = logging.getLogger(__name__)

# Mean request size of the published serving figures: 1,000 glances per request.
DEFAULT_GLANCES_PER_REQUEST = 1000


class WorkloadError(RuntimeError):
    """The artifact root contains no usable published snapshot."""


@dataclass(frozen=True)
class Workload:
    """Ids and feature tables of one published snapshot version."""

    profiles_root: Path
    manifest: Manifest
    glances: FeatureTable
    # Users of every shard, one table per shard.
    users: tuple[FeatureTable, ...]

    @property
    def glance_ids(self) -> list[str]:
        return [str(g) for g in self.glances.ids.tolist()]

    @property
    def user_ids(self) -> list[str]:
        return [str(u) for table in self.users for u in table.ids.tolist()]

    def sample(self, *, count: int, glances_per_request: int, seed: int = 0) -> list[tuple[str, list[str]]]:
        """Return ``count`` (user id, glance ids) pairs with uniformly drawn users and glances.

        Glance ids of one request are distinct while the snapshot holds enough glances, and drawn
        with repeats otherwise (the contract scores duplicates per position).
        """
        if count < 1 or glances_per_request < 1:
            raise ValueError(f"count and glances_per_request must be positive, got {count} and {glances_per_request}")
        rng = np.random.default_rng(seed)
        users = self.user_ids
        glances = np.array(self.glance_ids, dtype=object)
        replace = glances_per_request > len(glances)
        requests = []
        for _ in range(count):
            user = users[int(rng.integers(len(users)))]
            picked = rng.choice(len(glances), size=glances_per_request, replace=replace)
            requests.append((user, glances[picked].tolist()))
        return requests

    def feature_rows(self, user_id: str, glance_ids: list[str]) -> dict[str, np.ndarray]:
        """Return the six model inputs of (user, glance) rows, looked up the way a caller without leaves would."""
        user = self._user_vectors(user_id)
        index = self._glance_index
        rows = np.array([index[g] for g in glance_ids], dtype=np.int64)
        count = len(rows)
        arrays = {f"user_{section}": np.broadcast_to(user[section], (count, len(user[section]))) for section in ("meta", "image", "text")}
        for section in ("meta", "image", "text"):
            arrays[f"glance_{section}"] = getattr(self.glances, section)[rows]
        return arrays

    @cached_property
    def _glance_index(self) -> dict[str, int]:
        return self.glances.index()

    @cached_property
    def _user_rows(self) -> dict[str, tuple[int, int]]:
        return {str(user): (shard, row) for shard, table in enumerate(self.users) for row, user in enumerate(table.ids.tolist())}

    def _user_vectors(self, user_id: str) -> dict[str, np.ndarray]:
        found = self._user_rows.get(user_id)
        if found is None:
            return dict(self.manifest.cold_start)
        shard, row = found
        table = self.users[shard]
        return {"meta": table.meta[row], "image": table.image[row], "text": table.text[row]}


def load_workload(profiles_root: str | Path) -> Workload:
    """Load the published snapshot under ``profiles_root`` (the directory holding ``CURRENT``)."""
    root = Path(profiles_root)
    version = snapshot.current_version(root)
    if version is None:
        raise WorkloadError(f"no published profile snapshot under {root}: {root / 'CURRENT'} is missing; run `fmlite train` first")
    directory = root / str(version)
    manifest = snapshot.read_manifest(directory)
    glances = snapshot.load_glances(directory, manifest)
    users = tuple(snapshot.load_users(directory, shard, manifest) for shard in range(manifest.num_shards))
    if len(glances) == 0 or not any(len(table) for table in users):
        raise WorkloadError(f"snapshot {directory} contains {len(glances)} glances and {sum(len(t) for t in users)} users; both must be non-zero")
    logger.info("workload from snapshot %s: %d users, %d glances", directory, sum(len(t) for t in users), len(glances))
    return Workload(profiles_root=root, manifest=manifest, glances=glances, users=users)
