"""Replica sets: the servers one tier calls for a shard, and how a call picks one.

Addresses are ``HOST:PORT`` entries, or ``dns+HOST:PORT`` for a name (a Kubernetes headless
Service) that is resolved every ``refresh_s`` seconds, each A record becoming a replica. Calls go
to the replica with the fewest calls in flight, ties broken at random, so a slow replica
receives less work; a replica that failed recently is chosen only when no other is left.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable

from rpc.client import ThriftHttpClient, parse_address

__all__ = ["Replica", "ReplicaSet", "parse_replica_list"]

logger = logging.getLogger(__name__)

# A replica whose last call failed less than this long ago is avoided while others exist.
FAILURE_PENALTY_S = 1.0


@dataclass
class Replica:
    address: str
    client: ThriftHttpClient
    outstanding: int = 0
    failures: int = 0
    last_failure: float = field(default=-1e9)

    def penalised(self, now: float) -> bool:
        return now - self.last_failure < FAILURE_PENALTY_S


def parse_replica_list(text: str) -> list[str]:
    """Split a comma-separated address list and check each entry."""
    entries = [item.strip() for item in text.split(",") if item.strip()]
    if not entries:
        raise ValueError(f"empty address list {text!r}; expected HOST:PORT[,HOST:PORT...] or dns+HOST:PORT")
    for entry in entries:
        parse_address(entry.removeprefix("dns+"))
    return entries


class ReplicaSet:
    """Replicas of one shard (or one tier) with least-outstanding choice and DNS refresh."""

    def __init__(self, addresses: Iterable[str], *, pool_size: int = 64, refresh_s: float = 5.0):
        self._static = [a for a in addresses if not a.startswith("dns+")]
        self._dns = [a.removeprefix("dns+") for a in addresses if a.startswith("dns+")]
        self._pool_size = pool_size
        self._refresh_s = refresh_s
        self.replicas: dict[str, Replica] = {}
        for address in self._static:
            self._add(address)
        self._refresher: asyncio.Task | None = None

    def _add(self, address: str) -> None:
        if address not in self.replicas:
            self.replicas[address] = Replica(address, ThriftHttpClient(address, pool_size=self._pool_size))
            logger.info("replica added: %s", address)

    async def start(self) -> None:
        if self._dns:
            await self._resolve_once()
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _resolve_once(self) -> None:
        loop = asyncio.get_running_loop()
        wanted = set(self._static)
        for name in self._dns:
            host, port = parse_address(name)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                logger.warning("resolving %s failed: %s; keeping %d known replicas", name, error, len(self.replicas))
                return
            for info in infos:
                ip = info[4][0]
                wanted.add(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
        for address in wanted:
            self._add(address)
        for address in list(self.replicas):
            if address not in wanted:
                replica = self.replicas.pop(address)
                logger.info("replica removed: %s", address)
                await replica.client.close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self._resolve_once()

    def choose(self, exclude: Iterable[Replica] = ()) -> Replica | None:
        """Return the least-loaded replica not in ``exclude``, or None when none is left."""
        excluded = {id(r) for r in exclude}
        candidates = [r for r in self.replicas.values() if id(r) not in excluded]
        if not candidates:
            return None
        now = time.monotonic()
        healthy = [r for r in candidates if not r.penalised(now)]
        pool = healthy or candidates
        lowest = min(r.outstanding for r in pool)
        return random.choice([r for r in pool if r.outstanding == lowest])

    def __len__(self) -> int:
        return len(self.replicas)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for replica in self.replicas.values():
            await replica.client.close()
