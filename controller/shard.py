"""L1 shard controller: split a request into chunks and fan out to the shard's leaf replicas.

Contract of ``predict``:
- the user must hash to this controller's shard (``InvalidRequest`` otherwise), and every limit
  of ``rpc.validation`` is checked before any leaf is called;
- the deadline is ``timeout_ms`` (or ``default_timeout_ms``) after the server began reading the
  call; a request that arrives with no time left is dropped and counted;
- glance ids are split into chunks whose size ``controller.chunking`` chooses per request from
  the measured cost of leaf calls, starting at the variant's configured chunk size (default
  100); with ``adaptive_chunks.enabled`` False the configured size is used as is. All chunks
  are sent in parallel, each call bounded by ``min(chunk_timeout_ms, time left)`` and
  carrying that bound, less a small margin, as its ``timeout_ms``; ``controller.fanout``
  retries, hedges and pins versions;
- scores and flags come back in request order from one model version and one profile version;
  a chunk that fails on every try fails the request with ``Unavailable``, and a request whose
  deadline passes raises ``DeadlineExceeded``;
- a leaf's ``InvalidRequest`` is passed through: retrying a bad request cannot help.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from prometheus_client import CollectorRegistry

from controller.chunking import AdaptiveChunkConfig, ChunkSizer
from controller.fanout import ChunkFanout, FanoutConfig
from controller.hedging import HedgeConfig, HedgePolicy
from controller.metrics import ControllerMetrics
from controller.replicas import ReplicaPolicy, ReplicaSet
from fmlite.sharding import shard_of
from rpc.deadline import request_deadline
from rpc.idl import fmlite_thrift
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
    # Rounds of re-sending chunks that came back at another model or profile version.
    version_rounds: int = 2
    default_variant: str = "fmlite"
    pool_size: int = 64
    hedging: HedgeConfig = field(default_factory=HedgeConfig)
    replica_policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)
    # Chunk sizes chosen from measured leaf-call cost; ``enabled=False`` keeps the configured ones.
    adaptive_chunks: AdaptiveChunkConfig = field(default_factory=AdaptiveChunkConfig)

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
        self.metrics = ControllerMetrics(registry, tier=self.tier)
        self.leaves = ReplicaSet(
            config.leaves,
            name=f"shard {config.shard} leaves",
            pool_size=config.pool_size,
            policy=config.replica_policy,
            metrics=self.metrics,
        )
        self.hedging = HedgePolicy(config.hedging)
        self.fanout = ChunkFanout(
            self.leaves,
            self.hedging,
            self.metrics,
            FanoutConfig(chunk_timeout_s=config.chunk_timeout_ms / 1000.0, retries=config.retries, version_rounds=config.version_rounds),
        )
        self.chunk_sizer = ChunkSizer(config.adaptive_chunks, registry=registry, tier=self.tier)
        self.draining = False

    async def start(self) -> None:
        await self.leaves.start()

    async def close(self) -> None:
        await self.leaves.close()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not len(self.leaves):
            return False, "loading"
        if not self.leaves.admitted:
            return False, "degraded"
        if self.leaves.ejected:
            return True, "degraded"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            shard=self.config.shard,
            details={
                "leaves": ",".join(self.leaves.replicas),
                "ejected": ",".join(r.address for r in self.leaves.ejected),
            },
        )

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        config = self.config
        shard = shard_of(request.user_id, config.num_shards)
        if shard != config.shard:
            raise invalid("user_id", f"user_id hashes to shard {shard} of {config.num_shards}; this controller serves shard {config.shard}")
        request_id = request.request_id or uuid.uuid4().hex
        variant = request.variant or config.default_variant
        deadline, budget_ms = request_deadline(request.timeout_ms, default_ms=config.default_timeout_ms)
        glance_ids: Sequence[str] = request.glance_ids
        if not glance_ids:
            return T.PredictResponse(
                scores=[], flags=b"", model_version="", profile_version="", variant=variant, shard=shard,
                request_id=request_id, unknown_glances=0, cold_start_user=False,
            )
        if budget_ms <= 0:
            self.metrics.deadline_dropped.inc()
            raise T.DeadlineExceeded(message=f"request {request_id} arrived with no time left (timeout_ms {budget_ms}); not scored")

        count = len(glance_ids)
        # Admitted replicas share the chunks; when all are ejected, calls go to every one.
        replicas = len(self.leaves.admitted) or len(self.leaves)
        fanout_started = time.monotonic()
        call_budget_s = min(deadline - fanout_started, self.fanout.config.chunk_timeout_s)
        size = self.chunk_sizer.size(variant, config.chunk_size_for(variant), count=count, replicas=replicas, budget_s=call_budget_s)
        chunks = [glance_ids[start:start + size] for start in range(0, count, size)]
        for chunk in chunks:
            self.metrics.chunk_size.observe(len(chunk))
        try:
            results, (model_version, profile_version) = await self.fanout.run(
                user_id=request.user_id, chunks=chunks, request_id=request_id, variant=variant, deadline=deadline
            )
        except T.DeadlineExceeded:
            # The time until the deadline is a lower bound of what the calls needed.
            self.chunk_sizer.observe(variant, count=count, chunks=len(chunks), replicas=replicas, seconds=time.monotonic() - fanout_started)
            raise
        self.chunk_sizer.observe(variant, count=count, chunks=len(chunks), replicas=replicas, seconds=time.monotonic() - fanout_started)

        scores: list[float] = []
        flags = bytearray()
        unknown = 0
        cold_start = False
        for result in results:
            scores.extend(result.scores)
            flags += result.flags
            unknown += result.unknown_glances
            cold_start = cold_start or result.cold_start_user
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
