"""Find a platform's leaves and wait until every one reports the versions a release published.

Leaves are found by walking the tiers over the ``health`` call: L0 reports each shard's L1
addresses in its details (``l1_shard_<K>``), and each L1 reports its leaves (``leaves``). A
caller may instead pass the leaf addresses. A leaf reports the version of its default variant's
model and its profile version in ``health()`` (and in every response).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from rpc.framed import client_for

__all__ = ["DiscoveryError", "LeafStatus", "discover_leaves", "fetch_health", "leaf_statuses", "wait_for_versions"]

logger = logging.getLogger(__name__)

_HEALTH_TIMEOUT_S = 2.0


class DiscoveryError(RuntimeError):
    """A tier's health call failed, or its details lack the addresses of the next tier."""


@dataclass(frozen=True)
class LeafStatus:
    """Result of one leaf's health call, or the reason it failed."""

    address: str
    ready: bool = False
    model_version: str | None = None
    profile_version: str | None = None
    error: str | None = None

    def serves(self, model_version: str, profile_version: str) -> bool:
        return self.ready and self.model_version == model_version and self.profile_version == profile_version

    def describe(self) -> str:
        if self.error:
            return f"{self.address} unreachable ({self.error})"
        state = "ready" if self.ready else "not ready"
        return f"{self.address} {state}, model {self.model_version}, profiles {self.profile_version}"


async def fetch_health(address: str) -> object:
    """Return the health response of the server at ``address`` (HTTP, or ``framed://`` for a leaf)."""
    client = client_for(address, pool_size=1)
    try:
        return await client.health(timeout_s=_HEALTH_TIMEOUT_S)
    finally:
        await client.close()


def _split(text: str | None) -> list[str]:
    return [item for item in (text or "").split(",") if item]


async def _discover(l0: str) -> list[str]:
    try:
        health = await fetch_health(l0)
    except Exception as error:
        raise DiscoveryError(f"health call to L0 at {l0} failed: {type(error).__name__}: {error}") from None
    details = health.details or {}
    shards = sorted((key for key in details if key.startswith("l1_shard_")), key=lambda key: int(key.rsplit("_", 1)[1]))
    if not shards:
        raise DiscoveryError(f"L0 at {l0} does not report its L1 addresses (health details {sorted(details)}); pass the leaf addresses with --leaves")
    leaves: list[str] = []
    for key in shards:
        for l1 in _split(details[key]):
            try:
                l1_health = await fetch_health(l1)
            except Exception as error:
                raise DiscoveryError(f"health call to L1 {l1} of {key.replace('l1_shard_', 'shard ')} failed: {error}") from None
            found = _split((l1_health.details or {}).get("leaves"))
            if not found:
                raise DiscoveryError(f"L1 {l1} reports no leaves; pass the leaf addresses with --leaves")
            leaves += [leaf for leaf in found if leaf not in leaves]
    return leaves


def discover_leaves(*, l0: str | None = None, leaves: Sequence[str] = ()) -> list[str]:
    """Return the leaf addresses: ``leaves`` when given, else those found from the L0 at ``l0``."""
    if leaves:
        return list(dict.fromkeys(leaves))
    if l0 is None:
        raise DiscoveryError("no L0 address and no leaf addresses; pass --l0 HOST:PORT or --leaves HOST:PORT,...")
    return asyncio.run(_discover(l0))


async def _statuses(addresses: Sequence[str]) -> list[LeafStatus]:
    async def one(address: str) -> LeafStatus:
        try:
            health = await fetch_health(address)
        except Exception as error:
            return LeafStatus(address=address, error=f"{type(error).__name__}: {error}"[:200])
        return LeafStatus(address=address, ready=bool(health.ready), model_version=health.model_version, profile_version=health.profile_version)

    return list(await asyncio.gather(*(one(address) for address in addresses)))


def leaf_statuses(addresses: Sequence[str]) -> list[LeafStatus]:
    """Return the health of every leaf, failures included."""
    return asyncio.run(_statuses(addresses))


def wait_for_versions(
    addresses: Sequence[str],
    *,
    model_version: str,
    profile_version: str,
    timeout_s: float,
    interval_s: float = 1.0,
    out: Callable[[str], None] = print,
) -> tuple[bool, list[LeafStatus]]:
    """Poll every leaf until all serve ``model_version`` with ``profile_version``, or ``timeout_s`` passes.

    Prints a progress line whenever the number of leaves that serve the versions changes, and
    returns (all serve them, last statuses).
    """
    started = time.monotonic()
    total = len(addresses)
    out(f"waiting up to {timeout_s:.0f} s for {total} leaves to serve model {model_version} with profiles {profile_version}")
    last_done = -1
    while True:
        statuses = leaf_statuses(addresses)
        done = sum(status.serves(model_version, profile_version) for status in statuses)
        elapsed = time.monotonic() - started
        if done != last_done:
            behind = [status.describe() for status in statuses if not status.serves(model_version, profile_version)]
            out(f"  {elapsed:5.1f} s: {done}/{total} leaves serve them" + (f"; waiting for {'; '.join(behind)}" if behind else ""))
            last_done = done
        if done == total:
            return True, statuses
        if elapsed >= timeout_s:
            return False, statuses
        time.sleep(min(interval_s, max(0.0, timeout_s - elapsed)))
