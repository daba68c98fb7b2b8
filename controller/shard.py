"""L1 shard controller: split a request into chunks and fan out to the shard's leaf replicas.

Contract of ``predict``:
- the user must hash to this controller's shard (``InvalidRequest`` otherwise);
- glance ids are split into chunks of the variant's chunk size (default 100) and all chunks are
  sent in parallel, each to the least-loaded leaf replica;
- each chunk call has a timeout of ``min(chunk_timeout_ms, time left)``; a chunk that times out
  or fails is sent once more to another replica with the time that is left;
- scores and flags come back in request order; a chunk that fails twice fails the request with
  ``Unavailable``, and a request whose deadline passes raises ``DeadlineExceeded``;
- a leaf's ``InvalidRequest`` is passed through: retrying a bad request cannot help.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from controller.replicas import Replica, ReplicaSet
from fmlite.sharding import shard_of
from rpc.errors import CallTimeout, RpcError
from rpc.idl import fmlite_thrift
from rpc.ratelimit import RateLimitedLog
from rpc.validation import invalid, validate_predict_request

__all__ = ["ShardControllerConfig", "ShardController"]

logger = logging.getLogger(__name__)

T = fmlite_thrift


@dataclass(frozen=True)
class ShardControllerConfig:
    """Settings of one L1 shard controller."""

    shard: int
    num_shards: int
    leaves: tuple[str, ...]
    chunk_size: int = 100
    # Chunk size per variant where it differs from ``chunk_size`` (the cosine baseline uses 400).
    variant_chunk_sizes: Mapping[str, int] = field(default_factory=lambda: {"cosine": 400})
    # Time budget of a request that does not carry timeout_ms.
    default_timeout_ms: int = 50
    # Upper bound of one chunk call; below the request budget so that a retry still fits.
    chunk_timeout_ms: float = 30.0
    # Extra attempts of a failed chunk, each on another replica.
    retries: int = 1
    default_variant: str = "fmlite"
    pool_size: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is out of range for {self.num_shards} shards")
        if not self.leaves:
            raise ValueError(f"shard {self.shard} has no leaf addresses")
        for name, size in {"chunk_size": self.chunk_size, **self.variant_chunk_sizes}.items():
            if not 1 <= size <= T.MAX_GLANCES_PER_REQUEST:
                raise ValueError(f"chunk size for {name} must be in 1..{T.MAX_GLANCES_PER_REQUEST}, got {size}")
        if self.chunk_timeout_ms <= 0 or self.default_timeout_ms <= 0:
            raise ValueError("chunk_timeout_ms and default_timeout_ms must be positive")

    def chunk_size_for(self, variant: str) -> int:
        return self.variant_chunk_sizes.get(variant, self.chunk_size)


class ShardController:
    """The L1 tier's handler for the Thrift server."""

    tier = "l1"

    def __init__(self, config: ShardControllerConfig, *, registry: CollectorRegistry):
        self.config = config
        self.leaves = ReplicaSet(config.leaves, pool_size=config.pool_size)
        self.metrics = ControllerMetrics(registry, tier=self.tier)
        self.draining = False
        self._errors = RateLimitedLog(logger)

    async def start(self) -> None:
        await self.leaves.start()

    async def close(self) -> None:
        await self.leaves.close()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not len(self.leaves):
            return False, "loading"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            shard=self.config.shard,
            details={"leaves": ",".join(self.leaves.replicas)},
        )

    async def predict(self, request: Any) -> Any:
        started = time.monotonic()
        validate_predict_request(request)
        config = self.config
        shard = shard_of(request.user_id, config.num_shards)
        if shard != config.shard:
            raise invalid("user_id", f"user_id hashes to shard {shard} of {config.num_shards}; this controller serves shard {config.shard}")
        request_id = request.request_id or uuid.uuid4().hex
        variant = request.variant or config.default_variant
        budget_ms = request.timeout_ms if request.timeout_ms is not None else config.default_timeout_ms
        deadline = started + budget_ms / 1000.0
        glance_ids: Sequence[str] = request.glance_ids
        if not glance_ids:
            return T.PredictResponse(
                scores=[], flags=b"", model_version="", profile_version="", variant=variant, shard=shard,
                request_id=request_id, unknown_glances=0, cold_start_user=False,
            )
        if budget_ms <= 0:
            self.metrics.deadline_dropped.inc()
            raise T.DeadlineExceeded(message=f"request {request_id} arrived with no time left")

        size = config.chunk_size_for(variant)
        chunks = [glance_ids[start:start + size] for start in range(0, len(glance_ids), size)]
        calls = [self._score_chunk(request.user_id, chunk, request_id, variant, deadline) for chunk in chunks]
        results = await asyncio.gather(*calls, return_exceptions=True)

        scores: list[float] = []
        flags = bytearray()
        versions: set[tuple[str, str]] = set()
        unknown = 0
        cold_start = False
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise result
            scores.extend(result.scores)
            flags += result.flags
            unknown += result.unknown_glances
            cold_start = cold_start or result.cold_start_user
            versions.add((result.model_version, result.profile_version))
        if len(versions) > 1:
            # NOTE: replicas in the middle of a reload can answer with different versions; the
            # response names the first and the mix is logged until versions are pinned per request.
            self._errors.warning("request %s mixed versions across chunks: %s", request_id, sorted(versions))
        model_version, profile_version = results[0].model_version, results[0].profile_version
        self.metrics.predictions.inc(len(scores))
        self.metrics.unknown_glances.inc(unknown)
        if cold_start:
            self.metrics.cold_start_users.inc()
        self.metrics.variant_requests.labels(tier=self.tier, variant=variant).inc()
        return T.PredictResponse(
            scores=scores,
            flags=bytes(flags),
            model_version=model_version,
            profile_version=profile_version,
            variant=variant,
            shard=shard,
            request_id=request_id,
            unknown_glances=unknown,
            cold_start_user=cold_start,
        )

    async def _score_chunk(self, user_id: str, chunk: Sequence[str], request_id: str, variant: str, deadline: float) -> Any:
        self.metrics.chunk_size.observe(len(chunk))
        tried: list[Replica] = []
        last_error: Exception | None = None
        for attempt in range(1 + self.config.retries):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.metrics.deadline_dropped.inc()
                raise T.DeadlineExceeded(
                    message=f"request {request_id}: deadline passed before chunk of {len(chunk)} ids was scored"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            replica = self.leaves.choose(exclude=tried)
            if replica is None:
                break
            tried.append(replica)
            if attempt:
                self.metrics.retries.inc()
            timeout_s = min(self.config.chunk_timeout_ms / 1000.0, remaining)
            leaf_request = T.PredictRequest(
                user_id=user_id,
                glance_ids=list(chunk),
                request_id=request_id,
                timeout_ms=max(1, int(timeout_s * 1000)),
                variant=variant,
            )
            replica.outstanding += 1
            try:
                response = await replica.client.predict(leaf_request, timeout_s=timeout_s)
            except T.InvalidRequest:
                raise
            except (CallTimeout, RpcError, T.Unavailable, T.DeadlineExceeded) as error:
                last_error = error
                replica.failures += 1
                replica.last_failure = time.monotonic()
                if isinstance(error, CallTimeout):
                    self.metrics.timeouts.inc()
                self.metrics.failures.labels(tier=self.tier, kind=type(error).__name__).inc()
                self._errors.warning("request %s: chunk to %s failed (attempt %d): %s", request_id, replica.address, attempt + 1, error)
                continue
            finally:
                replica.outstanding -= 1
            if len(response.scores) != len(chunk) or len(response.flags) != len(chunk):
                last_error = RpcError(
                    f"leaf {replica.address} returned {len(response.scores)} scores and {len(response.flags)} flags for {len(chunk)} ids"
                )
                self._errors.error("request %s: %s", request_id, last_error)
                continue
            replica.failures = 0
            return response
        raise T.Unavailable(
            message=f"shard {self.config.shard}: chunk of {len(chunk)} ids failed on {len(tried)} replicas: {last_error}",
            tier=self.tier,
        )
