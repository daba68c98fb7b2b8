"""Redis profile store as seen by a leaf: the published version, its glances and the shard's users.

The leaf keeps a local copy in front of Redis (``leaf.cache.UserCache``): every glance of the
version, and the shard's users up to ``max_cached_users``. When the whole shard fits, the cache
is complete and a miss is a user without a profile. Otherwise the users that were hot under the
previous version are fetched again, and a miss fetches that one user from Redis (asyncio client).

Every Redis call has explicit connect and socket timeouts and no automatic retry. redis-py
disconnects a connection whose command failed or timed out before returning it to the pool, so a
timed-out connection is never reused. After a failure the store counts as unavailable: lookups
of users missing from the cache are answered as cold start without calling Redis, until a ping
succeeds (the reloader pings every poll, and a lookup probes at most once per
``probe_interval_s``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fmlite.redis_layout import DEFAULT_PREFIX, KeyLayout, RowCodec, StoreLayoutError, decode_glance_part, manifest_from_json
from fmlite.snapshot import SECTIONS, FeatureTable, Manifest, SnapshotError
from leaf.cache import UserCache
from leaf.profiles import CachedUsers, ProfileCache, UserVectors, cold_start_vectors

__all__ = ["RedisStoreConfig", "StoreUnavailable", "RedisProfileSource"]

logger = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """Redis refused or dropped a call, or did not reply within its timeout."""


@dataclass(frozen=True)
class RedisStoreConfig:
    """Connection, timeouts and cache size of a leaf's Redis profile store."""

    url: str
    prefix: str = DEFAULT_PREFIX
    # TCP connect timeout of every connection, in seconds.
    connect_timeout_s: float = 0.25
    # Read/write timeout of small calls: version pointer, manifest, one user.
    socket_timeout_s: float = 0.25
    # Read timeout of bulk calls: one glance part (a few MB) or one batch of users.
    bulk_timeout_s: float = 10.0
    # Users kept in memory per leaf; see ``leaf.cache`` for the memory estimate per user.
    max_cached_users: int = 1_000_000
    # Users per HSCAN or HMGET call while filling the cache.
    batch_users: int = 1000
    # While unavailable, a user lookup tries Redis again at most this often.
    probe_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"invalid Redis URL {self.url!r}: expected redis://HOST:PORT/DB, rediss://... or unix://PATH")
        for name in ("connect_timeout_s", "socket_timeout_s", "bulk_timeout_s", "probe_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_cached_users < 1:
            raise ValueError(f"max_cached_users must be at least 1, got {self.max_cached_users}")
        if self.batch_users < 1:
            raise ValueError(f"batch_users must be at least 1, got {self.batch_users}")


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisProfileSource:
    """Reads one shard's profiles from Redis and keeps the local cache; thread-safe."""

    kind = "redis"

    def __init__(
        self,
        config: RedisStoreConfig,
        *,
        shard: int,
        num_shards: int,
        on_error: Callable[[str, BaseException], None] | None = None,
    ):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.config = config
        self.shard = shard
        self.num_shards = num_shards
        self.layout = KeyLayout(config.prefix)
        self._on_error = on_error
        options = {"socket_connect_timeout": config.connect_timeout_s, "retry": Retry(NoBackoff(), 0)}
        self._client = redis.Redis.from_url(config.url, socket_timeout=config.socket_timeout_s, **options)
        self._bulk = redis.Redis.from_url(config.url, socket_timeout=config.bulk_timeout_s, **options)
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        self._state_lock = threading.Lock()
        self._available = True
        self._last_failure = 0.0
        self.last_error: str | None = None
        self._errors = _redis_errors()
        self._reported_gone: set[int] = set()

    # ---- availability ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    def _failed(self, operation: str, error: BaseException) -> StoreUnavailable:
        with self._state_lock:
            was_available = self._available
            self._available = False
            self._last_failure = time.monotonic()
            self.last_error = f"{operation}: {type(error).__name__}: {error}"
        if was_available:
            logger.error("Redis profile store %s unavailable during %s: %s; serving from the local cache", self._where(), operation, error)
        if self._on_error is not None:
            self._on_error(operation, error)
        return StoreUnavailable(f"Redis {self._where()} failed during {operation}: {type(error).__name__}: {error}")

    def _succeeded(self) -> None:
        if not self._available:
            with self._state_lock:
                self._available = True
                self.last_error = None
            logger.info("Redis profile store %s is available again", self._where())

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"

    def ping(self) -> bool:
        """Send PING and return True when Redis replies within the timeouts; availability follows the result."""
        try:
            self._client.ping()
        except self._errors as error:
            self._failed("ping", error)
            return False
        self._succeeded()
        return True

    # ---- version pointer and manifest -----------------------------------------------------

    def published_version(self) -> int | None:
        try:
            value = self._client.get(self.layout.current)
        except self._errors as error:
            raise self._failed("read version pointer", error) from error
        self._succeeded()
        if value is None:
            return None
        text = value.decode(errors="replace")
        if not text.isdigit():
            raise StoreLayoutError(f"{self.layout.current} contains {text!r}, not a version number")
        return int(text)

    def _manifest(self, version: int) -> tuple[Manifest, dict[str, Any]]:
        try:
            value = self._client.get(self.layout.manifest(version))
        except self._errors as error:
            raise self._failed("read manifest", error) from error
        if value is None:
            raise SnapshotError(f"profile version {version} is not complete in Redis: {self.layout.manifest(version)} is missing")
        manifest, store = manifest_from_json(value)
        if manifest.num_shards != self.num_shards:
            raise SnapshotError(
                f"profile version {version} in Redis is partitioned into {manifest.num_shards} shards; this leaf was started with {self.num_shards}"
            )
        return manifest, dict(store)

    # ---- bulk load ------------------------------------------------------------------------

    def _glances(self, version: int, manifest: Manifest, store: dict[str, Any]) -> FeatureTable:
        arrays: dict[str, list[np.ndarray]] = {key: [] for key in ("ids", *SECTIONS)}
        for part in store["glance_parts"]:
            key = self.layout.glance_part(version, part["part"])
            try:
                value = self._bulk.get(key)
            except self._errors as error:
                raise self._failed("read glances", error) from error
            if value is None:
                raise SnapshotError(f"glance part {key} of profile version {version} is missing")
            if hashlib.sha256(value).hexdigest() != part["sha256"]:
                raise SnapshotError(f"glance part {key} does not match the SHA-256 in its manifest")
            decoded = decode_glance_part(value)
            for name in arrays:
                arrays[name].append(decoded[name])
        ids = np.concatenate(arrays["ids"]).astype(str) if arrays["ids"] else np.zeros(0, str)
        sections = {
            section: np.concatenate(arrays[section]).astype(np.float32)
            if arrays[section]
            else np.zeros((0, manifest.meta_dim if section == "meta" else manifest.embedding_dim), np.float32)
            for section in SECTIONS
        }
        finite = np.ones(len(ids), dtype=bool)
        for section in SECTIONS:
            if sections[section].shape != (len(ids), manifest.meta_dim if section == "meta" else manifest.embedding_dim):
                raise StoreLayoutError(f"glance section {section!r} of version {version} has shape {sections[section].shape}")
            finite &= np.isfinite(sections[section]).all(axis=1)
        rejected = int((~finite).sum())
        if rejected:
            logger.error("profile version %d in Redis: rejected %d glance rows holding NaN or inf (first ids: %s)", version, rejected, ids[~finite][:5].tolist())
        return FeatureTable(
            ids=ids[finite],
            meta=np.ascontiguousarray(sections["meta"][finite]),
            image=np.ascontiguousarray(sections["image"][finite]),
            text=np.ascontiguousarray(sections["text"][finite]),
            rejected=rejected,
        )

    def _finite_rows(self, ids: list[str], values: list[bytes], codec: RowCodec) -> tuple[list[str], np.ndarray, int]:
        rows = codec.decode_rows(values)
        finite = np.isfinite(rows).all(axis=1)
        rejected = int((~finite).sum())
        if rejected:
            kept = [user_id for user_id, ok in zip(ids, finite.tolist()) if ok]
            return kept, rows[finite], rejected
        return ids, rows, 0

    def _scan_users(self, key: str, limit: int, codec: RowCodec) -> tuple[list[str], np.ndarray, int]:
        """Return up to ``limit`` users of ``key`` in scan order, rows filled into one preallocated matrix."""
        ids: list[str] = []
        matrix = np.empty((limit, codec.width), np.float32)
        rejected = 0
        seen: set[str] = set()
        cursor = 0
        try:
            while len(ids) < limit:
                cursor, batch = self._bulk.hscan(key, cursor, count=self.config.batch_users)
                # HSCAN may return a field twice; the hash does not change during the scan.
                fresh = [(field.decode(), value) for field, value in batch.items() if field.decode() not in seen]
                if fresh:
                    seen.update(user_id for user_id, _ in fresh)
                    batch_ids, rows, dropped = self._finite_rows([u for u, _ in fresh], [v for _, v in fresh], codec)
                    room = limit - len(ids)
                    matrix[len(ids) : len(ids) + min(room, len(batch_ids))] = rows[:room]
                    ids.extend(batch_ids[:room])
                    rejected += dropped
                if cursor == 0:
                    break
        except self._errors as error:
            raise self._failed("scan users", error) from error
        return ids, matrix[: len(ids)], rejected

    def _fetch_users(self, key: str, user_ids: list[str], codec: RowCodec) -> tuple[list[str], np.ndarray, int]:
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        rejected = 0
        step = self.config.batch_users
        try:
            for start in range(0, len(user_ids), step):
                batch = user_ids[start : start + step]
                values = self._bulk.hmget(key, batch)
                present = [(user_id, value) for user_id, value in zip(batch, values) if value is not None]
                batch_ids, rows, dropped = self._finite_rows([u for u, _ in present], [v for _, v in present], codec)
                ids.extend(batch_ids)
                blocks.append(rows)
                rejected += dropped
        except self._errors as error:
            raise self._failed("fetch hot users", error) from error
        matrix = np.concatenate(blocks) if blocks else np.zeros((0, codec.width), np.float32)
        return ids, matrix, rejected

    def _hot_users(
        self, key: str, previous: ProfileCache | None, capacity: int, codec: RowCodec
    ) -> tuple[list[str], np.ndarray, int]:
        """Return up to ``capacity`` users in insertion order, the previously hottest last.

        The users cached under the previous version are fetched again. The rest of the
        capacity is filled with users in scan order (at first start nothing is known to be hot).
        """
        hot: list[str] = []
        if previous is not None and isinstance(previous.users, CachedUsers):
            hot = previous.users.cache.ids_by_recency(capacity)
        hot_ids, hot_rows, rejected = self._fetch_users(key, hot, codec)
        ids = hot_ids[::-1]
        rows = hot_rows[::-1]
        room = capacity - len(ids)
        if room > 0:
            scanned_ids, scanned_rows, scan_rejected = self._scan_users(key, capacity, codec)
            have = set(ids)
            extra = [i for i, user_id in enumerate(scanned_ids) if user_id not in have][:room]
            ids = [scanned_ids[i] for i in extra] + ids
            rows = np.concatenate([scanned_rows[extra], rows])
            rejected += scan_rejected
        return ids, rows, rejected

    def load(self, version: int, *, previous: ProfileCache | None = None) -> ProfileCache:
        """Load ``version``: all glances, and the shard's users up to the cache capacity."""
        started = time.perf_counter()
        manifest, store = self._manifest(version)
        glances = self._glances(version, manifest, store)
        if len(glances) == 0:
            raise SnapshotError(f"profile version {version} in Redis contains no valid glance profile")

        codec = RowCodec(manifest.meta_dim, manifest.embedding_dim)
        key = self.layout.users(version, self.shard)
        shard_users = int(store["users_per_shard"].get(str(self.shard), 0))
        capacity = self.config.max_cached_users
        if shard_users <= capacity:
            ids, rows, rejected = self._scan_users(key, shard_users, codec)
            if len(ids) + rejected != shard_users:
                raise SnapshotError(f"users hash {key} returned {len(ids) + rejected} rows, its manifest lists {shard_users}")
            complete = True
        else:
            ids, rows, rejected = self._hot_users(key, previous, capacity, codec)
            complete = False

        cache = UserCache.from_rows(
            ids, rows, capacity=capacity, meta_dim=manifest.meta_dim, embedding_dim=manifest.embedding_dim, complete=complete
        )
        profiles = ProfileCache(
            version=str(manifest.version),
            shard=self.shard,
            manifest=manifest,
            glances=glances,
            glance_index=glances.index(),
            users=CachedUsers(cache, rejected=rejected),
            cold_start=cold_start_vectors(manifest),
            load_seconds=time.perf_counter() - started,
            source="redis",
        )

        self._succeeded()
        logger.info(
            "loaded profiles version %s shard %d/%d from Redis: %d glances, %d of %d users cached (%s), %d rows rejected, %.2f s",
            profiles.version, self.shard, self.num_shards, len(glances), len(cache), shard_users,
            "complete" if complete else f"capacity {capacity}", profiles.rejected_rows, profiles.load_seconds,
        )
        return profiles

    # ---- request path ---------------------------------------------------------------------

    def _async_client(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = aioredis.Redis.from_url(
                self.config.url,
                socket_connect_timeout=self.config.connect_timeout_s,
                socket_timeout=self.config.socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            self._async = (loop, client)
        return self._async[1]

    def should_try(self) -> bool:
        """Return True when a request may call Redis: it is available, or a probe is due."""
        return self._available or time.monotonic() - self._last_failure >= self.config.probe_interval_s

    async def fetch_user(self, profiles: ProfileCache, user_id: str) -> UserVectors | None:
        """Fetch one user of ``profiles``'s version into its cache; None when the user has no profile.

        Raises ``StoreUnavailable`` without calling Redis while it is unavailable and no probe is due.
        """
        if not self.should_try():
            raise StoreUnavailable(f"Redis {self._where()} is unavailable: {self.last_error}")
        if not self._available:
            with self._state_lock:
                # One probe per interval: push the next one out before calling.
                self._last_failure = time.monotonic()
        version = int(profiles.version)
        try:
            # The manifest check rides in the same round trip: a missing user of a deleted
            # version must not pass for a user without a profile.
            pipeline = self._async_client().pipeline(transaction=False)
            pipeline.hget(self.layout.users(version, self.shard), user_id)
            pipeline.exists(self.layout.manifest(version))
            value, version_exists = await pipeline.execute()
        except self._errors as error:
            raise self._failed("fetch user", error) from error
        self._succeeded()
        if not version_exists:
            if version not in self._reported_gone:
                self._reported_gone.add(version)
                logger.error("profile version %d was deleted from Redis while this leaf serves it; users missing from the cache get the cold-start profile", version)
            raise StoreUnavailable(f"profile version {version} is no longer in Redis {self._where()}")
        if value is None:
            return None
        manifest = profiles.manifest
        codec = RowCodec(manifest.meta_dim, manifest.embedding_dim)
        row = codec.decode_rows([value])[0]
        if not np.isfinite(row).all():
            logger.error("user %r of profile version %s contains NaN or inf in Redis; serving the cold-start profile", user_id, profiles.version)
            return None
        if isinstance(profiles.users, CachedUsers):
            profiles.users.cache.put(user_id, row)
        meta, image, text = codec.split(row[None, :])
        return UserVectors(meta[0], image[0], text[0], cold_start=False)

    async def aclose(self) -> None:
        if self._async is not None:
            loop, client = self._async
            self._async = None
            if loop is asyncio.get_running_loop():
                await client.aclose()

    def close(self) -> None:
        self._client.close()
        self._bulk.close()
