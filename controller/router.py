"""L0 router: pick the shard from the user id, the variant from the traffic split, and forward.

Contract of ``predict``:
- bad input is rejected with ``InvalidRequest`` before anything is forwarded;
- an empty glance list returns an empty response without calling any other tier;
- the shard is ``fmlite.sharding.shard_of(user_id, num_shards)``; the variant is the request's
  own when set (it must be declared in the traffic config), else the user's bucket's variant;
- the deadline is ``timeout_ms`` (or ``default_timeout_ms``) after the server began reading the
  call, and the request goes to an L1 replica of that shard with the time that is left, less a
  small margin (``rpc.deadline.forward_timeout_ms``), as its ``timeout_ms``; with no time left
  it is dropped and counted;
- when the shard has more than one L1 replica, a failed call is tried once more on another
  (``controller.replicas`` picks replicas and ejects failing ones);
- a combined variant (``controller.combine``) is scored by each of its base variants in parallel
  and blended; the response carries each base variant's scores in ``variant_scores``;
- the user's bucket's exploration policy (``controller.explore``) then moves positions up and flags
  them, unless the request named its own variant; ``bucket`` is set on every non-empty response.
The traffic split and the glance statistics are reloaded from their files without a restart
(``controller.experiments``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from prometheus_client import CollectorRegistry

from controller.experiments import Experiments, merge_combined
from controller.metrics import ControllerMetrics
from controller.replicas import Replica, ReplicaPolicy, ReplicaSet
from controller.traffic import DEFAULT_TRAFFIC, TrafficSplit
from fmlite.sharding import shard_of
from rpc.deadline import forward_timeout_ms, request_deadline
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
    replica_policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)

    def __post_init__(self) -> None:
        if sorted(self.shards) != list(range(len(self.shards))):
            raise ValueError(f"shards must be numbered 0..N-1 without gaps, got {sorted(self.shards)}")
        for shard, addresses in self.shards.items():
            if not addresses:
                raise ValueError(f"shard {shard} has no L1 address")

    @property
    def num_shards(self) -> int:
        return len(self.shards)


async def _all_or_first_error(calls: list[Any]) -> list[Any]:
    """Await every call and return their results; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    errors = [task.exception() for task in tasks if task.done() and not task.cancelled() and task.exception() is not None]
    if errors:
        raise errors[0]
    return [task.result() for task in tasks]


class Router:
    """The L0 tier's handler for the Thrift server."""

    tier = "l0"

    def __init__(self, config: RouterConfig, *, registry: CollectorRegistry):
        self.config = config
        self.experiments = Experiments(config.traffic, registry=registry)
        self.metrics = ControllerMetrics(registry, tier=self.tier)
        self.shards = {
            shard: ReplicaSet(
                addresses, name=f"shard {shard} L1s", pool_size=config.pool_size, policy=config.replica_policy, metrics=self.metrics
            )
            for shard, addresses in config.shards.items()
        }
        self.draining = False
        self._errors = RateLimitedLog(logger)

    @property
    def traffic(self) -> TrafficSplit:
        """Return the traffic split now in force (replaced when its file changes)."""
        return self.experiments.traffic

    async def start(self) -> None:
        for replicas in self.shards.values():
            await replicas.start()
        await self.experiments.start()

    async def close(self) -> None:
        await self.experiments.close()
        for replicas in self.shards.values():
            await replicas.close()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if any(replicas.ejected for replicas in self.shards.values()):
            return True, "degraded"
        return True, "ok"

    async def health(self) -> Any:
        ready, status = self.readiness()
        return T.HealthResponse(
            live=True,
            ready=ready,
            status=status,
            tier=self.tier,
            details={
                "shards": str(self.config.num_shards),
                "buckets": ",".join(b.name for b in self.traffic.buckets),
                "ejected": ",".join(r.address for replicas in self.shards.values() for r in replicas.ejected),
                # Topology for tools that walk the tiers (``fmlite release`` finds the leaves this way).
                **{f"l1_shard_{shard}": ",".join(replicas.replicas) for shard, replicas in self.shards.items()},
                **self.experiments.details(),
            },
        )

    def route(self, user_id: str) -> tuple[int, str]:
        """Return (shard, variant) for ``user_id`` under the current traffic split."""
        return shard_of(user_id, self.config.num_shards), self.traffic.variant_for(user_id)

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        traffic = self.traffic
        shard = shard_of(request.user_id, self.config.num_shards)
        bucket = traffic.bucket_for(request.user_id)
        variant = bucket.variant
        if request.variant:
            if request.variant not in traffic.variants:
                raise invalid("variant", f"unknown variant {request.variant!r}; declared variants: {sorted(traffic.variants)}")
            variant = request.variant

        request_time_ms = request.request_time_ms
        if request_time_ms is not None and (not isinstance(request_time_ms, int) or request_time_ms < 0):
            raise invalid("request_time_ms", f"request_time_ms must be a non-negative Unix time in milliseconds, got {request_time_ms!r}")
        request_id = request.request_id or uuid.uuid4().hex
        if not request.glance_ids:
            return T.PredictResponse(
                scores=[], flags=b"", model_version="", profile_version="", variant=variant, shard=shard,
                request_id=request_id, unknown_glances=0, cold_start_user=False,
            )

        deadline, budget_ms = request_deadline(request.timeout_ms, default_ms=self.config.default_timeout_ms)
        self.metrics.variant_requests.labels(tier=self.tier, variant=variant).inc()
        combination = traffic.combinations.get(variant)
        if combination is None:
            response = await self._forward(shard, request, request_id, variant, deadline, budget_ms)
        else:
            base = combination.variants
            replies = await _all_or_first_error([self._forward(shard, request, request_id, name, deadline, budget_ms) for name in base])
            response = merge_combined(variant, combination, dict(zip(base, replies)))
            self.experiments.metrics.combined_requests.labels(variant=variant).inc()

        if not request.variant:
            response = self.experiments.explore(bucket, glance_ids=request.glance_ids, response=response, request_time_ms=request_time_ms)
        response.bucket = bucket.name
        self.metrics.predictions.inc(len(response.scores))
        self.metrics.unknown_glances.inc(response.unknown_glances)
        if response.cold_start_user:
            self.metrics.cold_start_users.inc()
        return response

    async def _forward(self, shard: int, request: Any, request_id: str, variant: str, deadline: float, budget_ms: int) -> Any:
        """Send ``request`` as ``variant`` to an L1 of ``shard``, once more to another replica on failure."""
        forwarded = T.PredictRequest(
            user_id=request.user_id,
            glance_ids=request.glance_ids,
            request_id=request_id,
            variant=variant,
        )
        replicas = self.shards[shard]
        tried: list[Replica] = []
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.metrics.deadline_dropped.inc()
                raise T.DeadlineExceeded(
                    message=f"request {request_id}: {budget_ms} ms passed before shard {shard} replied; not forwarded"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            replica = replicas.choose(exclude=tried)
            if replica is None:
                raise T.Unavailable(message=f"request {request_id}: no L1 replica of shard {shard} replied: {last_error}", tier=self.tier)
            kind = "retry" if tried else "primary"
            if tried:
                self.metrics.retries.inc()
            self.metrics.calls[kind].inc()
            tried.append(replica)
            forwarded.timeout_ms = forward_timeout_ms(remaining)
            token = replicas.begin_call(replica)
            call_started = time.monotonic()
            try:
                response = await replica.client.predict(forwarded, timeout_s=remaining)
            except (T.InvalidRequest, T.DeadlineExceeded):
                replicas.observe_success(replica, time.monotonic() - call_started)
                raise
            except asyncio.CancelledError:
                replicas.observe_cancelled(replica, time.monotonic() - call_started)
                raise
            except (RpcError, T.Unavailable) as error:
                last_error = error
                timed_out = isinstance(error, CallTimeout)
                replicas.observe_failure(replica, time.monotonic() - call_started, counts_toward_ejection=not timed_out)
                if timed_out:
                    self.metrics.timeouts.inc()
                self.metrics.failures.labels(tier=self.tier, kind=type(error).__name__).inc()
                self._errors.warning("request %s: L1 %s of shard %d failed: %s", request_id, replica.address, shard, error)
                continue
            finally:
                replicas.end_call(replica, token)
            replicas.observe_success(replica, time.monotonic() - call_started)
            return response
