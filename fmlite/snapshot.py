"""Versioned profile snapshots: the file format shared by the profile build and the leaves.

A snapshot is a directory ``<root>/<version>/`` where ``version`` is a positive integer (newer is
larger), holding:

- ``manifest.json``: format version, snapshot version, shard count, feature layout (meta column
  names, embedding width), the cold-start user profile, the fallback score for unknown glances,
  row counts and the SHA-256 of every data file;
- ``glances.npz``: every live glance (``ids``, ``meta``, ``image``, ``text``);
- ``users-SSSSS-of-NNNNN.npz``: the users whose id hashes to shard ``SSSSS`` (same arrays plus
  ``peeks`` and ``impressions``).

Arrays are float32 and saved without pickle. ``<root>/CURRENT`` names the published version; it is
replaced atomically (write, fsync, rename), so a reader sees the old or the new version, never a
mix. Rows that hold NaN or inf are rejected at load and counted, never ranked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmlite.sharding import shard_of

__all__ = [
    "FORMAT_VERSION",
    "SECTIONS",
    "SnapshotError",
    "FeatureTable",
    "Manifest",
    "write_snapshot",
    "read_manifest",
    "load_glances",
    "load_users",
    "publish_version",
    "current_version",
    "list_versions",
    "users_file_name",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Feature sections of both the user and the glance vector, in model input order.
SECTIONS = ("meta", "image", "text")


class SnapshotError(Exception):
    """A snapshot is missing, incomplete, corrupt or does not match what the reader expects."""


@dataclass(frozen=True)
class FeatureTable:
    """Rows of features keyed by id: one float32 matrix per section, row ``i`` belongs to ``ids[i]``.

    ``rejected`` counts rows dropped at load because they held NaN or inf.
    """

    ids: np.ndarray
    meta: np.ndarray
    image: np.ndarray
    text: np.ndarray
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    rejected: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """Return a map from id to row number."""
        return {str(key): row for row, key in enumerate(self.ids.tolist())}


@dataclass(frozen=True)
class Manifest:
    """Parsed ``manifest.json`` of one snapshot version."""

    version: int
    num_shards: int
    meta_columns: tuple[str, ...]
    embedding_dim: int
    fallback_score: float
    cold_start: Mapping[str, np.ndarray]
    counts: Mapping[str, int]
    files: Mapping[str, str]
    info: Mapping[str, Any]

    @property
    def meta_dim(self) -> int:
        return len(self.meta_columns)


def users_file_name(shard: int, num_shards: int) -> str:
    return f"users-{shard:05d}-of-{num_shards:05d}.npz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_table(name: str, table: Mapping[str, np.ndarray], meta_dim: int, dim: int) -> int:
    ids = np.asarray(table["ids"])
    rows = len(ids)
    expected = {"meta": meta_dim, "image": dim, "text": dim}
    for section, width in expected.items():
        array = np.asarray(table[section])
        if array.shape != (rows, width):
            raise SnapshotError(
                f"{name}: section {section!r} has shape {array.shape}, expected ({rows}, {width})"
            )
    if len(set(ids.tolist())) != rows:
        raise SnapshotError(f"{name}: ids are not unique")
    return rows


def write_snapshot(
    root: str | os.PathLike[str],
    *,
    version: int,
    num_shards: int,
    meta_columns: list[str] | tuple[str, ...],
    glances: Mapping[str, np.ndarray],
    users: Mapping[str, np.ndarray],
    cold_start: Mapping[str, np.ndarray],
    fallback_score: float,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write snapshot ``version`` under ``root`` and return its directory; do not publish it.

    ``glances`` and ``users`` map ``ids``, ``meta``, ``image`` and ``text`` (and, for users,
    optional count arrays) to arrays with one row per id. Users are partitioned by
    ``fmlite.sharding.shard_of``. The directory is written under a temporary name and renamed
    into place, so a half-written snapshot never carries a version number.
    """
    if version < 1:
        raise SnapshotError(f"snapshot version must be a positive integer, got {version}")
    if num_shards < 1:
        raise SnapshotError(f"num_shards must be at least 1, got {num_shards}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / str(version)
    if final.exists():
        raise SnapshotError(f"snapshot version {version} already exists at {final}")

    meta_dim = len(meta_columns)
    dim = int(np.asarray(glances["text"]).shape[1])
    glance_rows = _check_table("glances", glances, meta_dim, dim)
    user_rows = _check_table("users", users, meta_dim, dim)
    for section in SECTIONS:
        width = meta_dim if section == "meta" else dim
        if np.asarray(cold_start[section]).shape != (width,):
            raise SnapshotError(f"cold_start[{section!r}] must have shape ({width},)")
    if not np.isfinite(fallback_score) or not 0.0 <= fallback_score <= 1.0:
        raise SnapshotError(f"fallback_score must be a probability, got {fallback_score}")

    # Created with the process umask, not mkdtemp's 0700, so readers running as another user
    # (a leaf or TF Serving container) can open the published directory.
    staging = root / f".{version}.{uuid.uuid4().hex}"
    staging.mkdir()
    files: dict[str, str] = {}

    def save(name: str, arrays: Mapping[str, np.ndarray]) -> None:
        path = staging / name
        prepared = {}
        for key, value in arrays.items():
            value = np.asarray(value)
            if key == "ids":
                value = value.astype(str)
            elif value.dtype.kind == "f":
                value = value.astype(np.float32)
            prepared[key] = value
        np.savez(path, **prepared)
        files[name] = _sha256(path)

    save("glances.npz", glances)
    user_ids = np.asarray(users["ids"]).astype(str)
    shards = np.fromiter((shard_of(uid, num_shards) for uid in user_ids.tolist()), np.int64, len(user_ids))
    per_shard: dict[str, int] = {}
    for shard in range(num_shards):
        rows = np.flatnonzero(shards == shard)
        save(users_file_name(shard, num_shards), {key: np.asarray(value)[rows] for key, value in users.items()})
        per_shard[str(shard)] = int(len(rows))

    manifest = {
        "format_version": FORMAT_VERSION,
        "version": int(version),
        "num_shards": int(num_shards),
        "hash": "mmh3_x86_32(utf8(user_id), seed=0) unsigned, modulo num_shards",
        "meta_columns": list(meta_columns),
        "embedding_dim": dim,
        "fallback_score": float(fallback_score),
        "cold_start": {section: np.asarray(cold_start[section], np.float32).tolist() for section in SECTIONS},
        "counts": {"glances": glance_rows, "users": user_rows, "users_per_shard": per_shard},
        "files": files,
        "info": dict(info or {}),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.rename(staging, final)
    logger.info("wrote profile snapshot %s: %d glances, %d users, %d shards", final, glance_rows, user_rows, num_shards)
    return final


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read and check ``manifest.json`` of the snapshot in ``directory``."""
    path = Path(directory) / "manifest.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise SnapshotError(f"snapshot manifest not found: {path}") from error
    except json.JSONDecodeError as error:
        raise SnapshotError(f"snapshot manifest {path} is not valid JSON: {error}") from error
    if raw.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot {path} has format_version {raw.get('format_version')!r}, this reader supports {FORMAT_VERSION}"
        )
    cold_start = {section: np.asarray(raw["cold_start"][section], np.float32) for section in SECTIONS}
    for section, vector in cold_start.items():
        if not np.all(np.isfinite(vector)):
            raise SnapshotError(f"snapshot {path}: cold-start section {section!r} contains NaN or inf")
    return Manifest(
        version=int(raw["version"]),
        num_shards=int(raw["num_shards"]),
        meta_columns=tuple(raw["meta_columns"]),
        embedding_dim=int(raw["embedding_dim"]),
        fallback_score=float(raw["fallback_score"]),
        cold_start=cold_start,
        counts=raw["counts"],
        files=raw["files"],
        info=raw.get("info", {}),
    )


def _load_table(directory: Path, name: str, manifest: Manifest, *, verify: bool) -> FeatureTable:
    path = directory / name
    if name not in manifest.files:
        raise SnapshotError(f"snapshot {directory} lists no file {name}")
    if not path.exists():
        raise SnapshotError(f"snapshot file missing: {path}")
    if verify and _sha256(path) != manifest.files[name]:
        raise SnapshotError(f"snapshot file {path} does not match the SHA-256 in its manifest")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    _check_table(name, arrays, manifest.meta_dim, manifest.embedding_dim)
    finite = np.ones(len(arrays["ids"]), dtype=bool)
    for section in SECTIONS:
        finite &= np.isfinite(arrays[section]).all(axis=1)
    rejected = int((~finite).sum())
    if rejected:
        bad = arrays["ids"][~finite][:5].tolist()
        logger.error("snapshot %s: rejected %d rows holding NaN or inf (first ids: %s)", path, rejected, bad)
    extra = {key: value[finite] for key, value in arrays.items() if key not in ("ids", *SECTIONS)}
    return FeatureTable(
        ids=arrays["ids"][finite],
        meta=np.ascontiguousarray(arrays["meta"][finite], dtype=np.float32),
        image=np.ascontiguousarray(arrays["image"][finite], dtype=np.float32),
        text=np.ascontiguousarray(arrays["text"][finite], dtype=np.float32),
        extra=extra,
        rejected=rejected,
    )


def load_glances(directory: str | os.PathLike[str], manifest: Manifest | None = None, *, verify: bool = True) -> FeatureTable:
    """Load every glance profile of the snapshot in ``directory``."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    return _load_table(directory, "glances.npz", manifest, verify=verify)


def load_users(
    directory: str | os.PathLike[str], shard: int, manifest: Manifest | None = None, *, verify: bool = True
) -> FeatureTable:
    """Load the user profiles of ``shard`` from the snapshot in ``directory``."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    if not 0 <= shard < manifest.num_shards:
        raise SnapshotError(f"shard {shard} is out of range: snapshot {directory} has {manifest.num_shards} shards")
    return _load_table(directory, users_file_name(shard, manifest.num_shards), manifest, verify=verify)


def list_versions(root: str | os.PathLike[str]) -> list[int]:
    """Return the complete snapshot versions under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(path.name) for path in root.iterdir() if path.name.isdigit() and (path / "manifest.json").exists())


def current_version(root: str | os.PathLike[str]) -> int | None:
    """Return the published version named by ``<root>/CURRENT``, or None when nothing is published."""
    pointer = Path(root) / "CURRENT"
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise SnapshotError(f"{pointer} must hold a version number, found {text!r}")
    return int(text)


def publish_version(root: str | os.PathLike[str], version: int) -> None:
    """Point ``<root>/CURRENT`` at ``version`` with an atomic rename."""
    root = Path(root)
    if not (root / str(version) / "manifest.json").exists():
        raise SnapshotError(f"cannot publish version {version}: {root / str(version)} is not a complete snapshot")
    temporary = root / f".CURRENT.{uuid.uuid4().hex}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(handle, "w") as stream:
        stream.write(f"{version}\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, root / "CURRENT")
    logger.info("published profile snapshot version %d under %s", version, root)
