"""Publisher of profile snapshots to the Redis profile store (key layout: ``fmlite.redis_layout``).

``publish_snapshot`` copies one file snapshot (``fmlite.snapshot``) into Redis under its own
version number: every glance part and every shard's users hash first, the manifest last, then
a Lua script moves the version pointer in one step. Leaves read the pointer and then only keys of
that version, so they see the old or the new snapshot, never a mix. Versions older than the
newest ``keep_versions`` are deleted with UNLINK after the switch, never the published one.
Rows holding NaN or inf are dropped by the snapshot reader and their count is stored in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmlite import snapshot
from fmlite.redis_layout import (
    DEFAULT_PREFIX,
    GLANCE_PART_ROWS,
    LAYOUT_VERSION,
    KeyLayout,
    RowCodec,
    encode_glance_part,
)

__all__ = [
    "PublishError",
    "VersionExistsError",
    "PublishResult",
    "connect",
    "publish_snapshot",
    "activate_version",
    "stored_versions",
    "current_store_version",
]

logger = logging.getLogger(__name__)

# Users per HSET command; about 1.8 MB of values at 913 float32 columns per row.
_USERS_PER_COMMAND = 500
# HSET commands sent per round trip.
_COMMANDS_PER_PIPELINE = 8

# Moves the pointer only to a version whose manifest exists; returns the previous pointer value.
_SWITCH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('version ' .. ARGV[1] .. ' is not complete: its manifest key is missing')
end
local previous = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1])
return previous
"""


class PublishError(RuntimeError):
    """The snapshot cannot be published, or the store contains something unexpected."""


class VersionExistsError(PublishError):
    """The version is already complete in the store; a published version never changes."""


@dataclass(frozen=True)
class PublishResult:
    """Summary of one ``publish_snapshot`` call: the version, counts and deleted versions."""

    version: int
    previous_version: int | None
    activated: bool
    glances: int
    users: int
    rejected_rows: int
    deleted_versions: tuple[int, ...]
    seconds: float


def connect(url: str, *, connect_timeout_s: float = 5.0, socket_timeout_s: float = 60.0) -> Any:
    """Return a redis-py client for ``url`` with explicit timeouts and no automatic retry.

    Without ``retry`` redis-py retries a failed command three times, so a silent server would
    hold the caller for four times the socket timeout.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _versions_with_keys(client: Any, layout: KeyLayout) -> set[int]:
    versions: set[int] = set()
    marker = f"{layout.prefix}:v"
    for key in client.scan_iter(match=f"{layout.prefix}:v*:*", count=1000):
        text = key.decode() if isinstance(key, bytes) else key
        number = text[len(marker):].split(":", 1)[0]
        if number.isdigit():
            versions.add(int(number))
    return versions


def _delete_version(client: Any, layout: KeyLayout, version: int) -> int:
    keys = list(client.scan_iter(match=f"{layout.version_prefix(version)}*", count=1000))
    client.zrem(layout.versions, str(version))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    return len(keys)


def stored_versions(client: Any, *, prefix: str = DEFAULT_PREFIX) -> list[int]:
    """Return the complete versions in the store, oldest first."""
    layout = KeyLayout(prefix)
    return sorted(int(value) for value in client.zrange(layout.versions, 0, -1))


def current_store_version(client: Any, *, prefix: str = DEFAULT_PREFIX) -> int | None:
    """Return the version the pointer names, or None when nothing is published."""
    value = client.get(KeyLayout(prefix).current)
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    if not text.isdigit():
        raise PublishError(f"{KeyLayout(prefix).current} contains {text!r}, not a version number")
    return int(text)


def activate_version(client: Any, version: int, *, prefix: str = DEFAULT_PREFIX) -> int | None:
    """Point the store at the complete ``version`` (also a rollback); return the previous version."""
    import redis

    layout = KeyLayout(prefix)
    try:
        previous = client.eval(_SWITCH_SCRIPT, 2, layout.manifest(version), layout.current, str(int(version)))
    except redis.ResponseError as error:
        raise PublishError(f"cannot activate version {version} under {prefix}: {error}") from error
    logger.info("profile store %s now serves version %d (was %s)", prefix, version, previous)
    if previous is None:
        return None
    return int(previous.decode() if isinstance(previous, bytes) else previous)


def _write_glances(client: Any, layout: KeyLayout, version: int, table: snapshot.FeatureTable) -> list[dict[str, Any]]:
    parts = []
    for part, start in enumerate(range(0, max(len(table), 1), GLANCE_PART_ROWS)):
        stop = min(start + GLANCE_PART_ROWS, len(table))
        value = encode_glance_part(table.ids[start:stop], table.meta[start:stop], table.image[start:stop], table.text[start:stop])
        client.set(layout.glance_part(version, part), value)
        parts.append({"part": part, "rows": stop - start, "sha256": hashlib.sha256(value).hexdigest()})
    return parts


def _write_users(client: Any, layout: KeyLayout, version: int, shard: int, table: snapshot.FeatureTable, codec: RowCodec) -> None:
    key = layout.users(version, shard)
    ids = table.ids.astype(str).tolist()
    pipeline = client.pipeline(transaction=False)
    queued = 0
    # Rows are encoded one command at a time, so the bytes of a whole shard never sit in memory twice.
    for start in range(0, len(ids), _USERS_PER_COMMAND):
        stop = start + _USERS_PER_COMMAND
        rows = codec.encode_rows(table.meta[start:stop], table.image[start:stop], table.text[start:stop])
        pipeline.hset(key, mapping=dict(zip(ids[start:stop], rows)))
        queued += 1
        if queued == _COMMANDS_PER_PIPELINE:
            pipeline.execute()
            queued = 0
    if queued:
        pipeline.execute()


def publish_snapshot(
    snapshot_dir: str | os.PathLike[str],
    *,
    client: Any,
    prefix: str = DEFAULT_PREFIX,
    activate: bool = True,
    keep_versions: int = 2,
) -> PublishResult:
    """Write the snapshot in ``snapshot_dir`` to Redis under its version and, with ``activate``, publish it.

    Raises ``VersionExistsError`` when that version is already complete in the store. Partial keys
    of the same version left by an interrupted publish are deleted first. ``keep_versions`` (at
    least 1) complete versions stay in the store after the switch; older ones are deleted.
    """
    if keep_versions < 1:
        raise PublishError(f"keep_versions must be at least 1, got {keep_versions}")
    started = time.perf_counter()
    directory = Path(snapshot_dir)
    manifest = snapshot.read_manifest(directory)
    raw_manifest = json.loads((directory / "manifest.json").read_text())
    layout = KeyLayout(prefix)
    version = manifest.version
    if client.exists(layout.manifest(version)):
        raise VersionExistsError(f"profile version {version} is already complete in the store under {prefix}; publish a snapshot with a new version")
    leftover = _delete_version(client, layout, version)
    if leftover:
        logger.warning("deleted %d keys of an incomplete earlier publish of version %d", leftover, version)

    glances = snapshot.load_glances(directory, manifest)
    parts = _write_glances(client, layout, version, glances)
    codec = RowCodec(manifest.meta_dim, manifest.embedding_dim)
    users_per_shard: dict[str, int] = {}
    rejected = glances.rejected
    for shard in range(manifest.num_shards):
        table = snapshot.load_users(directory, shard, manifest)
        _write_users(client, layout, version, shard, table, codec)
        users_per_shard[str(shard)] = len(table)
        rejected += table.rejected
        stored = client.hlen(layout.users(version, shard))
        if stored != len(table):
            raise PublishError(f"users hash of shard {shard}, version {version} contains {stored} rows after the write, expected {len(table)}")

    raw_manifest["store"] = {
        "layout_version": LAYOUT_VERSION,
        "row_dtype": "<f4",
        "row_sections": ["meta", "image", "text"],
        "glance_parts": parts,
        "glances": len(glances),
        "users_per_shard": users_per_shard,
        "rejected_rows": rejected,
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    client.set(layout.manifest(version), json.dumps(raw_manifest, sort_keys=True))
    client.zadd(layout.versions, {str(version): version})
    logger.info(
        "stored profile version %d under %s: %d glances in %d parts, %d users in %d shards, %d rows rejected",
        version, prefix, len(glances), len(parts), sum(users_per_shard.values()), manifest.num_shards, rejected,
    )

    previous = None
    deleted: list[int] = []
    if activate:
        previous = activate_version(client, version, prefix=prefix)
        current = current_store_version(client, prefix=prefix)
        complete = stored_versions(client, prefix=prefix)
        keep = set(complete[-keep_versions:]) | {current}
        for old in sorted(_versions_with_keys(client, layout) - keep):
            if old < version:
                _delete_version(client, layout, old)
                deleted.append(old)
        if deleted:
            logger.info("deleted old profile versions %s from %s", deleted, prefix)
    return PublishResult(
        version=version,
        previous_version=previous,
        activated=activate,
        glances=len(glances),
        users=int(np.sum(list(users_per_shard.values()))),
        rejected_rows=rejected,
        deleted_versions=tuple(deleted),
        seconds=time.perf_counter() - started,
    )
