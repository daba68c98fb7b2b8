"""Leaf predictor: score one chunk of glance ids for one user from local profiles.

Contract of ``predict``:
- the user must hash to this leaf's shard (``InvalidRequest`` otherwise) and the variant must be
  one this leaf serves;
- the request is scored from one ``LeafState``: one profile version and the model versions
  bound to it, which the response names;
- a user without a profile is scored with the cold-start profile: every position carries
  ``FLAG_COLD_START_USER`` and the request is counted. A user missing from the local cache
  while the Redis profile store is unavailable is treated the same way and also counted in
  ``fmlite_store_outage_cold_starts``;
- a glance without a profile gets the snapshot's fallback score and ``FLAG_UNKNOWN_GLANCE``,
  and is counted; it is never passed to the model;
- a request that arrives with ``timeout_ms`` 0 is dropped without scoring (``DeadlineExceeded``)
  and counted.

Readiness is ``ok`` once a state is installed, and ``degraded`` (still ready) while the profile
store does not reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from prometheus_client import CollectorRegistry

from fmlite.sharding import shard_of
from leaf.metrics import LeafMetrics
from leaf.profiles import FileProfileSource, ProfileCache, ProfileSource
from leaf.reload import LeafState, Reloader, ReloadSettings
from leaf.runners import RUNNER_KINDS, ModelRunner, RunnerOptions, build_runner
from leaf.store import RedisProfileSource, RedisStoreConfig, StoreUnavailable
from leaf.tfserving_runner import ModelVersionUnavailable, TFServingError
from rpc.idl import fmlite_thrift
from rpc.validation import invalid, validate_predict_request

__all__ = ["LeafConfig", "LeafHandler", "LeafMetrics", "build_runner"]

logger = logging.getLogger(__name__)

T = fmlite_thrift
FLAG_UNKNOWN = T.FLAG_UNKNOWN_GLANCE
FLAG_COLD = T.FLAG_COLD_START_USER


@dataclass(frozen=True)
class LeafConfig:
    """Settings of one leaf process."""

    shard: int
    num_shards: int
    # File snapshot root (contains CURRENT and <version>/). With ``redis`` set it is only read
    # when Redis is unavailable at start; None means Redis only.
    profiles: str | None = None
    # Variant name -> model base directory (TF Serving layout). "cosine" needs no directory.
    models: Mapping[str, str] = field(default_factory=dict)
    # Runner of every variant with a model directory: numpy, savedmodel or tfserving.
    runner: str = "numpy"
    runner_options: RunnerOptions = RunnerOptions()
    default_variant: str = "fmlite"
    serve_cosine: bool = True
    # Redis profile store; None reads file snapshots only.
    redis: RedisStoreConfig | None = None
    # Chunk sizes scored at every switch, so the first real call does not pay for tracing.
    warmup_sizes: tuple[int, ...] = (1, 100, 400)
    # Seconds between checks for new model and profile versions; 0 turns hot reload off.
    reload_interval_s: float = 5.0
    # Largest difference from a version's recorded warm-up scores that is accepted.
    check_tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is out of range for {self.num_shards} shards")
        if self.runner not in RUNNER_KINDS:
            raise ValueError(f"unknown runner {self.runner!r}; available: {', '.join(RUNNER_KINDS)}")
        if self.profiles is None and self.redis is None:
            raise ValueError("the leaf needs a profile source: a snapshot directory (--profiles) or Redis (--redis-url)")
        if self.reload_interval_s < 0:
            raise ValueError(f"reload_interval_s must not be negative, got {self.reload_interval_s}")


def _remove_series(metric: Any, *labels: str) -> None:
    """Drop one labelled series of an info gauge, so only the loaded version reports 1."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never exported, nothing to drop


class LeafHandler:
    """The leaf tier's handler for the Thrift server."""

    tier = "leaf"

    def __init__(self, config: LeafConfig, *, registry: CollectorRegistry):
        self.config = config
        self.metrics = LeafMetrics(registry)
        self.draining = False
        self.state: LeafState | None = None
        self.store: RedisProfileSource | None = None
        self.reloader: Reloader | None = None

    # ---- state ----------------------------------------------------------------------------

    @property
    def profiles(self) -> ProfileCache | None:
        return self.state.profiles if self.state is not None else None

    @property
    def runners(self) -> Mapping[str, ModelRunner]:
        return self.state.runners if self.state is not None else {}

    def _sources(self) -> tuple[ProfileSource, ProfileSource | None]:
        config = self.config
        files = FileProfileSource(config.profiles, shard=config.shard, num_shards=config.num_shards) if config.profiles else None
        if config.redis is None:
            return files, None
        metrics = self.metrics

        def count_error(operation: str, error: BaseException) -> None:
            metrics.store_errors.labels(tier=self.tier, operation=operation).inc()
            metrics.store_available.set(0)

        self.store = RedisProfileSource(config.redis, shard=config.shard, num_shards=config.num_shards, on_error=count_error)
        return self.store, files

    def load(self) -> None:
        """Load profiles and models, check them, install the first state and start hot reload."""
        config = self.config
        source, fallback = self._sources()
        settings = ReloadSettings(
            model_bases=dict(config.models),
            runner_kind=config.runner,
            runner_options=config.runner_options,
            serve_cosine=config.serve_cosine,
            warmup_sizes=config.warmup_sizes,
            tolerance=config.check_tolerance,
            interval_s=config.reload_interval_s,
        )
        self.reloader = Reloader(settings, source=source, fallback=fallback, metrics=self.metrics, install=self.install, current=lambda: self.state)
        self.install(self.reloader.initial_state())
        self.reloader.start()

    def install(self, state: LeafState) -> None:
        """Make ``state`` the one new requests are scored from, and publish its versions as metrics."""
        previous = self.state
        self.state = state
        metrics, tier = self.metrics, self.tier
        profiles = state.profiles
        metrics.rejected_profile_rows.set(profiles.rejected_rows)
        metrics.profile_load_seconds.set(profiles.load_seconds)
        metrics.cached_users.set(len(profiles.users))
        if previous is not None and previous.profile_version != state.profile_version:
            _remove_series(metrics.profile_version, tier, previous.profile_version)
        metrics.profile_version.labels(tier=tier, version=profiles.version).set(1)
        metrics.profile_version_number.set(float(profiles.version) if profiles.version.isdigit() else 0)
        for name, runner in state.runners.items():
            old = previous.runners.get(name) if previous is not None else None
            if old is not None and old.version != runner.version:
                _remove_series(metrics.model_version, tier, name, old.version)
            metrics.model_version.labels(tier=tier, variant=name, version=runner.version).set(1)
            metrics.model_version_number.labels(tier=tier, variant=name).set(float(runner.version) if runner.version.isdigit() else 0)
        metrics.store_available.set(1 if self.store is None or self.store.available else 0)
        logger.info("serving profiles %s (%s) with models %s", profiles.version, profiles.source, state.model_versions())

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if self.state is None:
            return False, "loading"
        if self.store is not None and not self.store.available:
            return True, "degraded"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        state = self.state
        details: dict[str, str] = {}
        runner = None
        if state is not None:
            details.update(state.model_versions())
            details["users"] = str(len(state.profiles.users))
            details["users_complete"] = str(state.profiles.users.complete).lower()
            details["glances"] = str(len(state.profiles.glances))
            details["profile_source"] = state.profiles.source
            runner = state.runners.get(self.config.default_variant)
        if self.store is not None:
            details["store"] = "available" if self.store.available else "unavailable"
            if self.store.last_error:
                details["store_error"] = self.store.last_error[:200]
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            model_version=runner.version if runner else None,
            profile_version=state.profile_version if state else None,
            shard=self.config.shard,
            details=details,
        )

    async def _user(self, profiles: ProfileCache, user_id: str) -> tuple[Any, bool]:
        """Return (user vectors, outage) where ``outage`` is True for a cold start forced by the store."""
        user = profiles.user(user_id)
        if user is not None:
            self.metrics.cache_hits.inc()
            return user, False
        self.metrics.cache_misses.inc()
        store = self.store
        if store is None:
            return profiles.cold_start, False
        try:
            fetched = await store.fetch_user(profiles, user_id)
        except StoreUnavailable as error:
            logger.debug("user %r scored as cold start: %s", user_id, error)
            return profiles.cold_start, True
        self.metrics.store_available.set(1)
        return (fetched if fetched is not None else profiles.cold_start), False

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        config = self.config
        shard = shard_of(request.user_id, config.num_shards)
        if shard != config.shard:
            raise invalid("user_id", f"user_id hashes to shard {shard} of {config.num_shards}; this leaf serves shard {config.shard}")
        state = self.state
        if state is None:
            raise T.Unavailable(message="leaf is still loading profiles and models", tier=self.tier)
        variant = request.variant or config.default_variant
        runner = state.runners.get(variant)
        if runner is None:
            raise invalid("variant", f"variant {variant!r} is not served by this leaf; served: {sorted(state.runners)}")
        request_id = request.request_id or ""
        if request.timeout_ms is not None and request.timeout_ms <= 0:
            self.metrics.deadline_dropped.inc()
            raise T.DeadlineExceeded(message=f"request {request_id} reached the leaf with no time left; not scored")

        profiles = state.profiles
        glance_ids = request.glance_ids
        count = len(glance_ids)
        user, outage = await self._user(profiles, request.user_id) if count else (profiles.cold_start, False)
        rows, known = profiles.glance_rows(glance_ids)
        scores = np.full(count, profiles.fallback_score, dtype=np.float64)
        if count and known.any():
            started = time.perf_counter()
            try:
                scores[known] = runner.score(user, profiles, rows if known.all() else rows[known])
            except TFServingError as error:
                if isinstance(error, ModelVersionUnavailable) and self.reloader is not None:
                    self.reloader.poll_soon()
                logger.error("request %s: runner %s version %s failed: %s", request_id, variant, runner.version, error)
                raise T.Unavailable(message=f"model server failed for variant {variant!r}: {error}", tier=self.tier) from error
            self.metrics.score_seconds.labels(tier=self.tier, variant=variant).observe(time.perf_counter() - started)
        flags = np.where(known, 0, FLAG_UNKNOWN).astype(np.uint8)
        if user.cold_start and count:
            flags |= FLAG_COLD
            self.metrics.cold_start_users.inc()
            if outage:
                self.metrics.outage_cold_starts.inc()
        unknown = int(count - int(known.sum()))
        self.metrics.unknown_glances.inc(unknown)
        self.metrics.predictions.inc(count)
        return T.PredictResponse(
            scores=scores.tolist(),
            flags=flags.tobytes(),
            model_version=runner.version,
            profile_version=profiles.version,
            variant=variant,
            shard=shard,
            request_id=request_id,
            unknown_glances=unknown,
            cold_start_user=bool(user.cold_start and count),
        )

    async def close(self) -> None:
        """Stop hot reload and close the profile store's connections."""
        if self.reloader is not None:
            # The reload thread may be loading a model; wait for it outside the event loop.
            await asyncio.to_thread(self.reloader.stop)
        if self.store is not None:
            await self.store.aclose()
            self.store.close()
