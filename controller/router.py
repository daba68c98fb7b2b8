"""L0 router: pick the shard from the user id, the variant from the traffic split, and forward.

Contract of ``predict``:
- bad input is rejected with ``InvalidRequest`` before anything is forwarded;
- an empty glance list returns an empty response without calling any other tier;
- the shard is ``fmlite.sharding.shard_of(user_id, num_shards)``; the variant is the request's
  own when set (it must be declared in the traffic config), else the user's bucket's variant;
- the request goes to an L1 replica of that shard with the time that is left; when the shard has
  more than one L1 replica a failed call is tried once more on another.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from controller.replicas import Replica, ReplicaSet
from controller.traffic import DEFAULT_TRAFFIC, TrafficSplit
from fmlite.sharding import shard_of
from rpc.errors import CallTimeout, RpcError
from rpc.idl import fmlite_thrift
from rpc.ratelimit import RateLimitedLog
from rpc.validation import invalid, validate_predict_request

__all__ = ["RouterConfig", "Router"]

logger = logging.getLogger(__name__)

T = fmlite_thrift


@dataclass(frozen=True)
class RouterConfig:
    """Settings of the L0 router: L1 addresses per shard and the traffic split."""

    shards: Mapping[int, tuple[str, ...]]
    traffic: TrafficSplit = field(default=DEFAULT_TRAFFIC)
    default_timeout_ms: int = 50
    pool_size: int = 64

    def __post_init__(self) -> None:
        if sorted(self.shards) != list(range(len(self.shards))):
            raise ValueError(f"shards must be numbered 0..N-1 without gaps, got {sorted(self.shards)}")
        for shard, addresses in self.shards.items():
            if not addresses:
                raise ValueError(f"shard {shard} has no L1 address")

    @property
    def num_shards(self) -> int:
        return len(self.shards)


class Router:
    """The L0 tier's handler for the Thrift server."""

    tier = "l0"

    def __init__(self, config: RouterConfig, *, registry: CollectorRegistry):
        self.config = config
        self.traffic = config.traffic
        self.shards = {shard: ReplicaSet(addresses, pool_size=config.pool_size) for shard, addresses in config.shards.items()}
        self.metrics = ControllerMetrics(registry, tier=self.tier)
        self.draining = False
        self._errors = RateLimitedLog(logger)

    async def start(self) -> None:
        for replicas in self.shards.values():
            await replicas.start()

    async def close(self) -> None:
        for replicas in self.shards.values():
            await replicas.close()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            details={"shards": str(self.config.num_shards), "buckets": ",".join(b.name for b in self.traffic.buckets)},
        )

    def route(self, user_id: str) -> tuple[int, str]:
        """Return (shard, variant) for ``user_id`` under the current traffic split."""
        return shard_of(user_id, self.config.num_shards), self.traffic.variant_for(user_id)

    async def predict(self, request: Any) -> Any:
        started = time.monotonic()
        validate_predict_request(request)
        shard, variant = self.route(request.user_id)
        if request.variant:
            if request.variant not in self.traffic.variants:
                raise invalid("variant", f"unknown variant {request.variant!r}; declared variants: {sorted(self.traffic.variants)}")
            variant = request.variant
        request_id = request.request_id or uuid.uuid4().hex
        if not request.glance_ids:
            return T.PredictResponse(
                scores=[], flags=b"", model_version="", profile_version="", variant=variant, shard=shard,
                request_id=request_id, unknown_glances=0, cold_start_user=False,
            )
        budget_ms = request.timeout_ms if request.timeout_ms is not None else self.config.default_timeout_ms
        deadline = started + budget_ms / 1000.0
        forwarded = T.PredictRequest(
            user_id=request.user_id,
            glance_ids=request.glance_ids,
            request_id=request_id,
            variant=variant,
        )
        self.metrics.variant_requests.labels(tier=self.tier, variant=variant).inc()
        replicas = self.shards[shard]
        tried: list[Replica] = []
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.metrics.deadline_dropped.inc()
                raise T.DeadlineExceeded(message=f"request {request_id}: {budget_ms} ms passed before shard {shard} answered ({last_error})")
            replica = replicas.choose(exclude=tried)
            if replica is None:
                raise T.Unavailable(message=f"request {request_id}: no L1 replica of shard {shard} answered: {last_error}", tier=self.tier)
            if tried:
                self.metrics.retries.inc()
            tried.append(replica)
            forwarded.timeout_ms = max(1, int(remaining * 1000))
            replica.outstanding += 1
            try:
                response = await replica.client.predict(forwarded, timeout_s=remaining)
            except (T.InvalidRequest, T.DeadlineExceeded):
                raise
            except (RpcError, T.Unavailable) as error:
                last_error = error
                replica.last_failure = time.monotonic()
                if isinstance(error, CallTimeout):
                    self.metrics.timeouts.inc()
                self.metrics.failures.labels(tier=self.tier, kind=type(error).__name__).inc()
                self._errors.warning("request %s: L1 %s of shard %d failed: %s", request_id, replica.address, shard, error)
                continue
            finally:
                replica.outstanding -= 1
            self.metrics.predictions.inc(len(response.scores))
            self.metrics.unknown_glances.inc(response.unknown_glances)
            if response.cold_start_user:
                self.metrics.cold_start_users.inc()
            return response
