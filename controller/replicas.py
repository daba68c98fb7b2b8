"""Replica sets: the servers one tier calls for a shard, which one a call goes to, and which are left out.

Addresses are ``HOST:PORT`` entries (Thrift over HTTP) or ``framed://HOST:PORT`` entries (framed
Thrift, see ``rpc.framed``), and either form behind ``dns+`` (``dns+framed://HOST:PORT``) names a
host (a Kubernetes headless Service) that is resolved every ``refresh_s`` seconds, each A record
becoming a replica with the same transport.

Choice (power of two choices): two admitted replicas are drawn at random and the call goes to the
one with the lower cost, ``(calls in flight + 1) * latency estimate``. The estimate is a peak EWMA
of call latency: a slower call raises it at once, a faster one lowers it by ``ewma_alpha`` of the
difference, and a failed call counts as ``failure_penalty_s``. While a replica gets no calls, its
estimate decays toward the set's average with time constant ``decay_s``, so a replica that was
slow is tried again now and then instead of being avoided for good. The age of a replica's oldest
call still in flight is a lower bound of its estimate, so a replica that stops replying becomes
expensive while its calls are pending, before any of them times out.

Ejection: a replica leaves the choice after ``eject_after_failures`` consecutive failed calls
that point at the replica (refused or reset connections, unreadable replies, ``Unavailable``;
timeouts only raise its latency estimate), after ``eject_after_checks`` consecutive failed health
checks, or at once when a health check returns not ready (draining or loading). Ejected replicas
keep being checked every ``health_interval_s``; ``readmit_after_checks`` consecutive passing
checks bring one back. When every replica is ejected, calls go to all of them (fail open).

Versions: each replica's last (model version, profile version) per variant is recorded from its
replies. While the admitted replicas disagree (during a reload), choices prefer the version most
of them report, ties going to the newer one, and a caller can ask for replicas at one version.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from controller.metrics import ControllerMetrics
from rpc.client import parse_address
from rpc.errors import RpcError
from rpc.framed import FRAMED_SCHEME, client_for, split_transport
from rpc.idl import fmlite_thrift

__all__ = ["ReplicaPolicy", "Replica", "ReplicaSet", "parse_replica_list", "version_order"]

logger = logging.getLogger(__name__)

T = fmlite_thrift

# (model version, profile version) of one reply.
VersionPair = tuple[str, str]


@dataclass(frozen=True)
class ReplicaPolicy:
    """Settings of replica choice, health checks, ejection and re-admission."""

    # Weight of a new sample when it lowers the latency estimate.
    ewma_alpha: float = 0.3
    # Time constant of the decay of an idle replica's estimate toward the set's average.
    decay_s: float = 2.0
    # Latency counted for a failed call.
    failure_penalty_s: float = 0.25
    # Estimate of a replica before its first call.
    initial_latency_s: float = 0.005
    eject_after_failures: int = 5
    eject_after_checks: int = 2
    readmit_after_checks: int = 2
    # Seconds between health-check rounds; 0 turns active health checks off.
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        for name in ("decay_s", "failure_penalty_s", "initial_latency_s", "health_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eject_after_failures", "eject_after_checks", "readmit_after_checks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.health_interval_s < 0:
            raise ValueError(f"health_interval_s must not be negative, got {self.health_interval_s}")


class Replica:
    """One server of a replica set and what the caller has observed of it."""

    __slots__ = (
        "address", "client", "outstanding", "pending", "latency_s", "observed_at", "failures",
        "check_failures", "check_passes", "ejected", "versions",
    )

    def __init__(self, address: str, client: Any, *, latency_s: float):
        self.address = address
        self.client = client
        # Calls sent and not finished.
        self.outstanding = 0
        # [start time, finished] of calls in start order; finished entries leave from the left.
        self.pending: deque[list] = deque()
        self.latency_s = latency_s
        self.observed_at = time.monotonic()
        # Consecutive failed calls that count toward ejection.
        self.failures = 0
        self.check_failures = 0
        self.check_passes = 0
        self.ejected = False
        # Variant -> (model version, profile version) of the last reply.
        self.versions: dict[str, VersionPair] = {}

    def __repr__(self) -> str:
        state = "ejected" if self.ejected else "admitted"
        return f"Replica({self.address}, {state}, {self.outstanding} in flight, {self.latency_s * 1000:.1f} ms)"


def parse_replica_list(text: str) -> list[str]:
    """Split a comma-separated address list and check each entry."""
    entries = [item.strip() for item in text.split(",") if item.strip()]
    if not entries:
        raise ValueError(f"empty address list {text!r}; expected HOST:PORT[,HOST:PORT...], framed://HOST:PORT or dns+ before either")
    for entry in entries:
        parse_address(split_transport(entry.removeprefix("dns+"))[1])
    return entries


def version_order(version: VersionPair) -> tuple:
    """Sort key of a version pair: numeric versions compare as numbers, others after them as text."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version)


class ReplicaSet:
    """Replicas of one shard (or one tier) with cost-based choice, health checks and DNS refresh."""

    def __init__(
        self,
        addresses: Iterable[str],
        *,
        name: str = "replicas",
        pool_size: int = 64,
        refresh_s: float = 5.0,
        policy: ReplicaPolicy | None = None,
        metrics: ControllerMetrics | None = None,
    ):
        addresses = list(addresses)
        self.name = name
        self.policy = policy or ReplicaPolicy()
        self._metrics = metrics
        self._static = [a for a in addresses if not a.startswith("dns+")]
        self._dns = [a.removeprefix("dns+") for a in addresses if a.startswith("dns+")]
        self._pool_size = pool_size
        self._refresh_s = refresh_s
        self.replicas: dict[str, Replica] = {}
        self._admitted: list[Replica] = []
        self._all: list[Replica] = []
        # Average latency over every replica: where idle estimates decay to.
        self._mean_latency_s = self.policy.initial_latency_s
        # Variant -> preferred version, present only while admitted replicas disagree.
        self._preferred: dict[str, VersionPair] = {}
        self._tasks: list[asyncio.Task] = []
        for address in self._static:
            self._add(address)

    # ---- membership ---------------------------------------------------------------------------

    def _add(self, address: str) -> None:
        if address not in self.replicas:
            # framed://HOST:PORT gets the framed client, HOST:PORT the HTTP one.
            client = client_for(address, pool_size=self._pool_size)
            self.replicas[address] = Replica(address, client, latency_s=self._mean_latency_s)
            logger.info("%s: replica added: %s", self.name, address)
            self._membership_changed()

    def _membership_changed(self) -> None:
        self._all = list(self.replicas.values())
        self._admitted = [r for r in self._all if not r.ejected]
        self._update_preferred_versions()
        if self._metrics is not None:
            self._metrics.set_ejected(self.name, len(self._all) - len(self._admitted))

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def admitted(self) -> list[Replica]:
        return list(self._admitted)

    @property
    def ejected(self) -> list[Replica]:
        return [r for r in self._all if r.ejected]

    async def start(self) -> None:
        """Resolve DNS names and start the refresh and health-check loops."""
        if self._dns:
            await self._resolve_once()
            self._tasks.append(asyncio.create_task(self._refresh_forever()))
        if self.policy.health_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._check_forever()))

    async def close(self) -> None:
        """Stop the background loops and close every client's connection pool."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        for replica in self.replicas.values():
            await replica.client.close()

    async def _resolve_once(self) -> None:
        loop = asyncio.get_running_loop()
        wanted = set(self._static)
        for name in self._dns:
            transport, host_port = split_transport(name)
            scheme = FRAMED_SCHEME if transport == "framed" else ""
            host, port = parse_address(host_port)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                logger.warning("%s: resolving %s failed: %s; keeping %d known replicas", self.name, name, error, len(self.replicas))
                return
            for info in infos:
                ip = info[4][0]
                wanted.add(scheme + (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"))
        for address in wanted:
            self._add(address)
        for address in list(self.replicas):
            if address not in wanted:
                replica = self.replicas.pop(address)
                logger.info("%s: replica removed: %s", self.name, address)
                self._membership_changed()
                await replica.client.close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self._resolve_once()

    # ---- choice -------------------------------------------------------------------------------

    def _cost(self, replica: Replica, now: float) -> float:
        estimate = replica.latency_s
        idle_s = now - replica.observed_at
        if idle_s > 0.05:
            mean = self._mean_latency_s
            estimate = mean + (estimate - mean) * math.exp(-idle_s / self.policy.decay_s)
        pending = replica.pending
        while pending and pending[0][1]:
            pending.popleft()
        if pending:
            estimate = max(estimate, now - pending[0][0])
        return (replica.outstanding + 1) * estimate

    @staticmethod
    def begin_call(replica: Replica) -> list:
        """Count a call to ``replica`` as in flight; pass the returned token to ``end_call``."""
        token = [time.monotonic(), False]
        replica.outstanding += 1
        replica.pending.append(token)
        return token

    @staticmethod
    def end_call(replica: Replica, token: list) -> None:
        """Count the call of ``token`` as finished, whatever its outcome."""
        replica.outstanding -= 1
        token[1] = True

    def choose(
        self,
        exclude: Sequence[Replica] = (),
        *,
        variant: str | None = None,
        version: VersionPair | None = None,
    ) -> Replica | None:
        """Return the replica for the next call, or None when every candidate is in ``exclude``.

        Candidates are the admitted replicas, or every replica when all are ejected (fail open).
        ``version`` narrows them to the replicas last seen at that version of ``variant`` when
        there are any. Without it, the version that most admitted replicas report is preferred
        while they disagree.
        """
        pool = self._admitted
        fail_open = not pool
        if fail_open:
            pool = self._all
        if exclude:
            pool = [r for r in pool if r not in exclude]
        target = version
        if target is None and self._preferred:
            target = self._preferred.get(variant)
        if target is not None:
            matching = [r for r in pool if r.versions.get(variant) == target]
            if matching:
                pool = matching
        if fail_open and pool and self._metrics is not None:
            self._metrics.fail_open_choices.inc()
        count = len(pool)
        if count == 0:
            return None
        if count == 1:
            return pool[0]
        first, second = random.sample(pool, 2) if count > 2 else ((pool[0], pool[1]) if random.random() < 0.5 else (pool[1], pool[0]))
        now = time.monotonic()
        return first if self._cost(first, now) <= self._cost(second, now) else second

    # ---- observations -------------------------------------------------------------------------

    def _observe_latency(self, replica: Replica, sample_s: float, now: float) -> None:
        if sample_s >= replica.latency_s:
            replica.latency_s = sample_s
        else:
            replica.latency_s += self.policy.ewma_alpha * (sample_s - replica.latency_s)
        replica.observed_at = now
        self._mean_latency_s += 0.05 * (sample_s - self._mean_latency_s)

    def observe_success(self, replica: Replica, latency_s: float, *, variant: str | None = None, version: VersionPair | None = None) -> None:
        """Record a call that returned a reply (scores or a typed error about the request)."""
        self._observe_latency(replica, latency_s, time.monotonic())
        replica.failures = 0
        if variant is not None and version is not None and replica.versions.get(variant) != version:
            previous = replica.versions.get(variant)
            replica.versions[variant] = version
            logger.info("%s: %s serves %s version %s (was %s)", self.name, replica.address, variant, version, previous)
            self._update_preferred_versions()

    def observe_failure(self, replica: Replica, elapsed_s: float, *, counts_toward_ejection: bool) -> None:
        """Record a failed call; ``counts_toward_ejection`` is False for timeouts."""
        self._observe_latency(replica, max(elapsed_s, self.policy.failure_penalty_s), time.monotonic())
        if not counts_toward_ejection:
            return
        replica.failures += 1
        if not replica.ejected and replica.failures >= self.policy.eject_after_failures:
            self._eject(replica, f"{replica.failures} consecutive failed calls")

    def observe_cancelled(self, replica: Replica, elapsed_s: float) -> None:
        """Record a call cancelled after ``elapsed_s``: its latency was at least that."""
        if elapsed_s > replica.latency_s:
            replica.latency_s = elapsed_s
            replica.observed_at = time.monotonic()

    def _update_preferred_versions(self) -> None:
        preferred: dict[str, VersionPair] = {}
        variants = {variant for replica in self._admitted for variant in replica.versions}
        for variant in variants:
            counts = Counter(r.versions[variant] for r in self._admitted if variant in r.versions)
            if len(counts) > 1:
                preferred[variant] = max(counts, key=lambda version: (counts[version], version_order(version)))
        self._preferred = preferred

    # ---- ejection and health checks -----------------------------------------------------------

    def _eject(self, replica: Replica, reason: str) -> None:
        replica.ejected = True
        replica.check_passes = 0
        logger.warning("%s: ejected %s: %s", self.name, replica.address, reason)
        if self._metrics is not None:
            self._metrics.replica_ejections.inc()
        self._membership_changed()

    def _readmit(self, replica: Replica) -> None:
        replica.ejected = False
        replica.failures = 0
        replica.check_failures = 0
        # Start from the set's average, not from the penalty it collected while failing.
        replica.latency_s = self._mean_latency_s
        replica.observed_at = time.monotonic()
        logger.info("%s: re-admitted %s after %d passing health checks", self.name, replica.address, replica.check_passes)
        if self._metrics is not None:
            self._metrics.replica_readmissions.inc()
        self._membership_changed()

    async def check_once(self) -> None:
        """Run one health check of every replica and eject or re-admit on the result."""
        await asyncio.gather(*(self._check(replica) for replica in list(self.replicas.values())))

    async def _check(self, replica: Replica) -> None:
        policy = self.policy
        not_ready = False
        try:
            health: Any = await replica.client.health(timeout_s=policy.health_timeout_s)
            passed = bool(health.live and health.ready)
            not_ready = not health.ready
            reason = f"health status {health.status!r}"
        except (RpcError, T.Unavailable, T.InvalidRequest, T.DeadlineExceeded) as error:
            passed = False
            reason = f"health check failed: {error}"
        if replica.address not in self.replicas:
            return
        if passed:
            replica.check_failures = 0
            replica.check_passes += 1
            if replica.ejected and replica.check_passes >= policy.readmit_after_checks:
                self._readmit(replica)
            return
        replica.check_passes = 0
        replica.check_failures += 1
        if not replica.ejected and (not_ready or replica.check_failures >= policy.eject_after_checks):
            self._eject(replica, reason)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.policy.health_interval_s)
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop the checks for good
                logger.exception("%s: health-check round failed", self.name)
