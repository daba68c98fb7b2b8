"""Fan-out of one request's chunks to a shard's leaf replicas, with retries, hedges and version pinning.

Each chunk call is a task. One loop per request waits for the next event (a call finished, the
hedge delay passed, the deadline passed) and acts on it:

- a reply with one score and one flag per id resolves its chunk. Any other call still pending
  for that chunk (a hedge or the call it hedged) is cancelled, which closes its connection;
- a failed call is retried on another replica (``retries`` times per chunk) once no other call
  of that chunk is pending; a chunk with no call left fails the request with ``Unavailable``;
- at the hedge delay, every chunk whose only call is still the first one gets a hedge on another
  replica while the hedge budget lasts;
- at the deadline, pending calls are cancelled and counted as dropped, and the request fails
  with ``DeadlineExceeded``; no retry, hedge or re-send starts with less than ``MIN_ATTEMPT_S``
  left;
- a leaf's ``InvalidRequest`` fails the request at once: the request itself is wrong.

When every chunk is resolved, the replies must come from one (model version, profile version).
If they do not (a leaf switched versions in the middle of the request), the version most chunks
carry is chosen, ties going to the newer one, and the other chunks are re-sent to replicas last
seen at that version, up to ``version_rounds`` times; after that the request fails with
``Unavailable`` rather than return a mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Sequence

from controller.hedging import HedgePolicy
from controller.metrics import ControllerMetrics
from controller.replicas import Replica, ReplicaSet, VersionPair, version_order
from rpc.deadline import forward_timeout_ms
from rpc.errors import CallTimeout, ProtocolViolation, RpcError
from rpc.idl import fmlite_thrift
from rpc.ratelimit import RateLimitedLog

__all__ = ["FanoutConfig", "ChunkFanout", "MIN_ATTEMPT_S"]

logger = logging.getLogger(__name__)

T = fmlite_thrift

# Shortest time budget worth a call: below it a leaf would drop the chunk anyway.
MIN_ATTEMPT_S = 0.001


@dataclass(frozen=True)
class FanoutConfig:
    """Timeouts and repeat limits of chunk calls."""

    # Upper bound of one chunk call; the time left to the deadline bounds it too.
    chunk_timeout_s: float = 0.030
    # Extra calls of a failed chunk, each on another replica.
    retries: int = 1
    # Rounds of re-sending chunks that came back with another version.
    version_rounds: int = 2

    def __post_init__(self) -> None:
        if self.chunk_timeout_s <= 0:
            raise ValueError(f"chunk_timeout_s must be positive, got {self.chunk_timeout_s}")
        if self.retries < 0 or self.version_rounds < 0:
            raise ValueError(f"retries and version_rounds must not be negative, got {self.retries}, {self.version_rounds}")


class _Attempt:
    __slots__ = ("chunk", "replica", "kind", "started", "task", "token")

    def __init__(self, chunk: int, replica: Replica, kind: str, started: float):
        self.chunk = chunk
        self.replica = replica
        self.kind = kind
        self.started = started
        self.task: asyncio.Task | None = None
        # In-flight token of ``ReplicaSet.begin_call``.
        self.token: list | None = None


class ChunkFanout:
    """Scores the chunks of requests on one replica set; shared by every request of an L1."""

    def __init__(self, replicas: ReplicaSet, hedging: HedgePolicy, metrics: ControllerMetrics, config: FanoutConfig):
        self.replicas = replicas
        self.hedging = hedging
        self.metrics = metrics
        self.config = config
        self.errors = RateLimitedLog(logger)

    async def run(
        self, *, user_id: str, chunks: Sequence[list[str]], request_id: str, variant: str, deadline: float
    ) -> tuple[list[Any], VersionPair]:
        """Return one reply per chunk, in chunk order, all from the returned version pair."""
        return await _FanoutRun(self, user_id, chunks, request_id, variant, deadline).execute()


class _FanoutRun:
    """State of one request's fan-out."""

    def __init__(self, owner: ChunkFanout, user_id: str, chunks: Sequence[list[str]], request_id: str, variant: str, deadline: float):
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.user_id = user_id
        self.chunks = chunks
        self.request_id = request_id
        self.variant = variant
        self.deadline = deadline
        count = len(chunks)
        self.results: list[Any] = [None] * count
        self.unresolved = count
        self.live: list[list[_Attempt]] = [[] for _ in range(count)]
        self.tried: list[list[Replica]] = [[] for _ in range(count)]
        self.retries_left = [owner.config.retries] * count
        self.attempts: list[_Attempt] = []
        self.finished: deque[_Attempt] = deque()
        self.waiter: asyncio.Future | None = None
        self.pinned: VersionPair | None = None
        self.last_error: BaseException | None = None

    # ---- calls --------------------------------------------------------------------------------

    def launch(self, index: int, kind: str) -> bool:
        """Start a call of chunk ``index``; return False when no replica or no time is left."""
        now = time.monotonic()
        remaining = self.deadline - now
        if remaining < MIN_ATTEMPT_S:
            return False
        owner = self.owner
        replica = owner.replicas.choose(self.tried[index], variant=self.variant, version=self.pinned)
        if replica is None:
            return False
        timeout_s = min(owner.config.chunk_timeout_s, remaining)
        request = T.PredictRequest(
            user_id=self.user_id,
            glance_ids=self.chunks[index],
            request_id=self.request_id,
            timeout_ms=forward_timeout_ms(timeout_s),
            variant=self.variant,
        )
        attempt = _Attempt(index, replica, kind, now)
        # Counted here, not when the task first runs, so the next choice in this loop pass
        # already counts the call.
        attempt.token = owner.replicas.begin_call(replica)
        attempt.task = self.loop.create_task(self._call(attempt, request, timeout_s))
        attempt.task.add_done_callback(lambda _task, done=attempt: self._on_done(done))
        self.tried[index].append(replica)
        self.live[index].append(attempt)
        self.attempts.append(attempt)
        owner.metrics.calls[kind].inc()
        return True

    def _on_done(self, attempt: _Attempt) -> None:
        self.owner.replicas.end_call(attempt.replica, attempt.token)
        self.finished.append(attempt)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _call(self, attempt: _Attempt, request: Any, timeout_s: float) -> Any:
        replicas = self.owner.replicas
        replica = attempt.replica
        try:
            response = await replica.client.predict(request, timeout_s=timeout_s)
        except asyncio.CancelledError:
            replicas.observe_cancelled(replica, time.monotonic() - attempt.started)
            raise
        except T.InvalidRequest:
            replicas.observe_success(replica, time.monotonic() - attempt.started)
            raise
        except (RpcError, T.Unavailable, T.DeadlineExceeded) as error:
            counts = not isinstance(error, (CallTimeout, T.DeadlineExceeded))
            replicas.observe_failure(replica, time.monotonic() - attempt.started, counts_toward_ejection=counts)
            raise
        latency_s = time.monotonic() - attempt.started
        replicas.observe_success(replica, latency_s, variant=self.variant, version=(response.model_version, response.profile_version))
        if attempt.kind == "primary":
            self.owner.hedging.observe(latency_s)
        return response

    # ---- event loop ---------------------------------------------------------------------------

    async def _wait(self, until: float) -> None:
        if self.finished:
            return
        waiter = self.loop.create_future()
        self.waiter = waiter
        handle = self.loop.call_later(max(0.0, until - time.monotonic()), _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self.waiter = None

    def _fail(self, index: int) -> BaseException:
        if self.deadline - time.monotonic() < MIN_ATTEMPT_S:
            self.owner.metrics.deadline_dropped.inc(self.unresolved)
            return T.DeadlineExceeded(
                message=f"request {self.request_id}: deadline passed before chunk {index} "
                f"({len(self.chunks[index])} ids) was scored (last error: {self.last_error})"
            )
        return T.Unavailable(
            message=f"request {self.request_id}: chunk {index} of {len(self.chunks[index])} ids failed on "
            f"{len(self.tried[index])} replicas: {self.last_error}",
            tier="l1",
        )

    def _handle_finished(self) -> None:
        metrics = self.owner.metrics
        while self.finished:
            attempt = self.finished.popleft()
            index = attempt.chunk
            self.live[index].remove(attempt)
            task = attempt.task
            if task.cancelled():
                continue
            error = task.exception()
            if self.results[index] is not None:
                continue
            if error is None:
                response = task.result()
                size = len(self.chunks[index])
                if len(response.scores) == size and len(response.flags) == size:
                    self._resolve(index, attempt, response)
                    continue
                error = ProtocolViolation(
                    f"leaf {attempt.replica.address} returned {len(response.scores)} scores and "
                    f"{len(response.flags)} flags for {size} ids"
                )
            if isinstance(error, T.InvalidRequest):
                raise error
            self.last_error = error
            if isinstance(error, CallTimeout):
                metrics.timeouts.inc()
            metrics.failures.labels(tier=metrics.tier, kind=type(error).__name__).inc()
            self.owner.errors.warning(
                "request %s: %s call of chunk %d to %s failed: %s", self.request_id, attempt.kind, index, attempt.replica.address, error
            )
            if self.live[index]:
                continue  # another call of this chunk is still pending
            if self.retries_left[index] > 0 and self.launch(index, "retry"):
                self.retries_left[index] -= 1
                metrics.retries.inc()
                continue
            raise self._fail(index)

    def _resolve(self, index: int, attempt: _Attempt, response: Any) -> None:
        self.results[index] = response
        self.unresolved -= 1
        for other in self.live[index]:
            other.task.cancel()
        if attempt.kind == "hedge":
            self.owner.metrics.hedge_wins.inc()

    def _hedge(self) -> None:
        owner = self.owner
        for index, attempts in enumerate(self.live):
            if self.results[index] is not None or len(attempts) != 1 or attempts[0].kind != "primary":
                continue
            if not owner.hedging.try_acquire():
                owner.metrics.hedges_denied.inc()
                return
            if not self.launch(index, "hedge"):
                owner.hedging.refund()

    def _version_target(self) -> VersionPair | None:
        """Return the version to pin when the replies carry more than one, else None."""
        first = self.results[0]
        model_version, profile_version = first.model_version, first.profile_version
        if all(r.model_version == model_version and r.profile_version == profile_version for r in self.results):
            return None
        counts = Counter((r.model_version, r.profile_version) for r in self.results)
        return max(counts, key=lambda version: (counts[version], version_order(version)))

    async def execute(self) -> tuple[list[Any], VersionPair]:
        owner = self.owner
        started = time.monotonic()
        try:
            for index in range(len(self.chunks)):
                if not self.launch(index, "primary"):
                    self.last_error = RpcError(f"no replica of {owner.replicas.name} to call")
                    raise self._fail(index)
            delay_s = owner.hedging.delay_s()
            owner.hedging.add_calls(len(self.chunks))
            hedge_at = started + min(delay_s, owner.config.chunk_timeout_s) if delay_s is not None else None
            rounds = 0
            while True:
                while self.unresolved:
                    next_event = self.deadline if hedge_at is None else min(hedge_at, self.deadline)
                    await self._wait(next_event)
                    self._handle_finished()
                    now = time.monotonic()
                    if hedge_at is not None and now >= hedge_at:
                        hedge_at = None
                        self._hedge()
                    if self.unresolved and now >= self.deadline:
                        owner.metrics.deadline_dropped.inc(self.unresolved)
                        pending = sorted({attempt.replica.address for attempts in self.live for attempt in attempts})
                        owner.errors.warning(
                            "request %s: deadline passed with %d of %d chunks unscored, calls pending on %s",
                            self.request_id, self.unresolved, len(self.chunks), pending,
                        )
                        raise T.DeadlineExceeded(
                            message=f"request {self.request_id}: deadline passed with {self.unresolved} of "
                            f"{len(self.chunks)} chunks unscored (last error: {self.last_error})"
                        )
                target = self._version_target()
                if target is None:
                    first = self.results[0]
                    return self.results, (first.model_version, first.profile_version)
                rounds += 1
                if rounds > owner.config.version_rounds:
                    raise T.Unavailable(
                        message=f"request {self.request_id}: replicas kept changing versions; "
                        f"replies still mixed after {owner.config.version_rounds} re-sends",
                        tier="l1",
                    )
                self._resend_for_version(target, rounds)
        finally:
            self._cancel_all()

    def _resend_for_version(self, target: VersionPair, round_number: int) -> None:
        owner = self.owner
        stale = [i for i, r in enumerate(self.results) if (r.model_version, r.profile_version) != target]
        if round_number == 1:
            owner.metrics.mixed_versions.inc()
        owner.errors.warning(
            "request %s: %d of %d chunks came back at another version than %s; re-sending them (round %d)",
            self.request_id, len(stale), len(self.results), target, round_number,
        )
        self.pinned = target
        for index in stale:
            self.results[index] = None
            self.unresolved += 1
            self.tried[index] = []
            self.retries_left[index] = owner.config.retries
            if not self.launch(index, "version"):
                self.last_error = RpcError(f"no replica at version {target} to re-send chunk {index} to")
                raise self._fail(index)

    def _cancel_all(self) -> None:
        for attempt in self.attempts:
            task = attempt.task
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # mark the outcome as retrieved


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
