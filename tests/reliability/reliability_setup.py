"""Constants and helpers shared by the reliability tests and their fixtures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fmlite import snapshot
from rpc.client import ThriftHttpClient
from server_processes import ProcessGroup, ServerProc

__all__ = [
    "NUM_SHARDS", "SHARD", "DEADLINE_MS", "GLANCES_PER_REQUEST", "Profiles", "PoisonedSnapshot", "Leaves", "Front",
    "call", "health", "l1_arguments", "start_l0",
]

NUM_SHARDS = 2
SHARD = 0
# Request budget of the load: generous for a 2-core machine shared with every server process.
DEADLINE_MS = 500
GLANCES_PER_REQUEST = 250


@dataclass(frozen=True)
class Profiles:
    """The published snapshot of the session's artifacts."""

    root: Path
    directory: Path
    manifest: snapshot.Manifest
    glances: snapshot.FeatureTable
    users: snapshot.FeatureTable


@dataclass(frozen=True)
class PoisonedSnapshot:
    """A copy of the snapshot where some glance and user rows hold NaN or inf."""

    root: Path
    glance_ids: tuple[str, ...]
    user_ids: tuple[str, ...]


@dataclass(frozen=True)
class Leaves:
    """Real leaf processes of shard 0."""

    a: ServerProc
    b: ServerProc
    # Killed with SIGKILL by the leaf-loss test.
    doomed: ServerProc
    # Sent SIGTERM by the drain test.
    draining: ServerProc
    # Serves the snapshot with NaN and inf rows.
    poisoned: ServerProc


@dataclass(frozen=True)
class Front:
    """L0 and the shard-0 L1 over the healthy leaves, shared by tests that do not break them."""

    l0: ServerProc
    l1: ServerProc


def call(address: str, request, *, timeout_s: float = 10.0):
    """Send one predict call and return the response (raises the typed error)."""

    async def run():
        client = ThriftHttpClient(address)
        try:
            return await client.predict(request, timeout_s=timeout_s)
        finally:
            await client.close()

    return asyncio.run(run())


def health(address: str):
    """Return the Thrift health response of the server at ``address``."""

    async def run():
        client = ThriftHttpClient(address)
        try:
            return await client.health(timeout_s=2.0)
        finally:
            await client.close()

    return asyncio.run(run())


def l1_arguments(leaf_addresses: list[str], *extra: str) -> list[str]:
    """Arguments of ``serve-l1`` for shard 0 with the test timing: 500 ms deadline, fast health checks.

    Chunk sizes are fixed (100 ids), so every scenario can count the leaf calls a request makes.
    """
    return [
        "serve-l1", "--shard", str(SHARD), "--num-shards", str(NUM_SHARDS), "--leaves", ",".join(leaf_addresses),
        "--fixed-chunk-size", "--deadline-ms", str(DEADLINE_MS), "--chunk-timeout-ms", "300", "--health-interval-s", "0.25",
        "--drain-timeout-s", "5", *extra,
    ]


def start_l0(procs: ProcessGroup, role: str, shard0_l1s: list[str], spare_l1: str, *extra: str) -> ServerProc:
    """Start an L0 whose shard 0 is ``shard0_l1s``; shard 1 goes to ``spare_l1``, which the tests never call."""
    return procs.fmlite(
        role, "serve-l0", "--shard", f"0={','.join(shard0_l1s)}", "--shard", f"1={spare_l1}",
        "--deadline-ms", str(DEADLINE_MS), "--health-interval-s", "0.25", "--drain-timeout-s", "5", *extra,
    )
