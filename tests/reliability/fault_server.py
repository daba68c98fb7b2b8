"""Faulty leaves for the reliability tests, each a real Thrift server process on loopback (test-only).

Run ``python tests/reliability/fault_server.py MODE --port-file FILE [options]``:

``stall``
    A Thrift server (``rpc.server``) in front of a real leaf: every predict call waits
    ``--stall-ms`` and is then forwarded with the rest of its ``timeout_ms`` (dropped with
    ``DeadlineExceeded`` when nothing is left). SIGUSR1 flips its health between passing and
    failing (failing health answers ``ready=False`` and predict answers ``Unavailable``);
    SIGUSR2 turns the stall off and on (``--start-fast`` starts with it off).
``scripted``
    A Thrift leaf without a model: the score of a glance id is ``crc32(id) / 2**32``, so a caller
    can check every score. Each call is delayed by a uniform random time up to
    ``--max-delay-ms``, so that some calls time out and others reply late.

Counters are on ``/metrics`` (``fault_*``). A server that accepts connections and never replies
is ``silent_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

# The repository root, so this file runs as a script from any directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rpc.client import ThriftHttpClient  # noqa: E402
from rpc.deadline import request_deadline  # noqa: E402
from rpc.idl import fmlite_thrift as T  # noqa: E402
from rpc.server import ServerConfig, ThriftHttpServer  # noqa: E402
from rpc.validation import max_body_bytes, validate_predict_request  # noqa: E402

__all__ = ["scripted_score", "main"]

logger = logging.getLogger("fault_server")


def scripted_score(glance_id: str) -> float:
    """Score the scripted leaf returns for ``glance_id``."""
    return zlib.crc32(glance_id.encode("utf-8")) / 2**32


class FaultCounters:
    def __init__(self, registry: CollectorRegistry):
        self.calls = Counter("fault_predict_calls", "Predict calls received.", registry=registry)
        self.forwarded = Counter("fault_forwarded_calls", "Calls forwarded to the upstream leaf.", registry=registry)
        self.expired = Counter("fault_expired_calls", "Calls whose timeout_ms ran out during the stall.", registry=registry)
        self.cancelled = Counter("fault_cancelled_calls", "Calls cancelled because the caller went away.", registry=registry)
        self.last_timeout_ms = Gauge("fault_last_timeout_ms", "timeout_ms of the last predict call received.", registry=registry)


class StallingProxy:
    """Leaf stand-in that stalls each predict call, then forwards it to a real leaf."""

    tier = "leaf"

    def __init__(self, upstream: str, stall_ms: float, counters: FaultCounters, *, stalling: bool):
        self.upstream = ThriftHttpClient(upstream)
        self.stall_s = stall_ms / 1000.0
        self.stalling = stalling
        self.healthy = True
        self.draining = False
        self.counters = counters

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        self.counters.calls.inc()
        self.counters.last_timeout_ms.set(request.timeout_ms if request.timeout_ms is not None else -1)
        if not self.healthy:
            raise T.Unavailable(message="fault server: health is switched off", tier="leaf")
        deadline, _ = request_deadline(request.timeout_ms, default_ms=1000)
        try:
            if self.stalling:
                await asyncio.sleep(self.stall_s)
        except asyncio.CancelledError:
            self.counters.cancelled.inc()
            raise
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            self.counters.expired.inc()
            raise T.DeadlineExceeded(message=f"request {request.request_id}: no time left after the stall")
        request.timeout_ms = remaining_ms
        self.counters.forwarded.inc()
        return await self.upstream.predict(request, timeout_s=remaining_ms / 1000.0)

    async def health(self) -> Any:
        ready, status = self.readiness()
        return T.HealthResponse(live=True, ready=ready, status=status, tier=self.tier)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        return (True, "ok") if self.healthy else (False, "degraded")

    async def close(self) -> None:
        await self.upstream.close()


class ScriptedLeaf:
    """Leaf stand-in whose scores a caller can recompute, with random reply delays."""

    tier = "leaf"

    def __init__(self, max_delay_ms: float, model_version: str, counters: FaultCounters, seed: int):
        self.max_delay_s = max_delay_ms / 1000.0
        self.model_version = model_version
        self.counters = counters
        self.random = random.Random(seed)
        self.draining = False

    async def predict(self, request: Any) -> Any:
        validate_predict_request(request)
        self.counters.calls.inc()
        try:
            await asyncio.sleep(self.random.uniform(0.0, self.max_delay_s))
        except asyncio.CancelledError:
            self.counters.cancelled.inc()
            raise
        ids = request.glance_ids
        return T.PredictResponse(
            scores=[scripted_score(gid) for gid in ids],
            flags=bytes(len(ids)),
            model_version=self.model_version,
            profile_version="1",
            variant=request.variant or "fmlite",
            shard=0,
            request_id=request.request_id or "",
            unknown_glances=0,
            cold_start_user=False,
        )

    async def health(self) -> Any:
        return T.HealthResponse(live=True, ready=not self.draining, status="draining" if self.draining else "ok", tier=self.tier)

    def readiness(self) -> tuple[bool, str]:
        return (False, "draining") if self.draining else (True, "ok")


async def _serve_thrift(handler: Any, registry: CollectorRegistry, port_file: str) -> None:
    server = ThriftHttpServer(handler, ServerConfig(max_body_bytes=max_body_bytes(), drain_timeout_s=2.0), registry=registry)
    port = await server.start()
    _write_port(port_file, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if isinstance(handler, StallingProxy):
        loop.add_signal_handler(signal.SIGUSR1, _flip, handler, "healthy")
        loop.add_signal_handler(signal.SIGUSR2, _flip, handler, "stalling")
    await stop.wait()
    handler.draining = True
    await server.stop()
    if hasattr(handler, "close"):
        await handler.close()


def _flip(handler: Any, attribute: str) -> None:
    setattr(handler, attribute, not getattr(handler, attribute))
    logger.info("%s is now %s", attribute, getattr(handler, attribute))


def _write_port(port_file: str, port: int) -> None:
    temporary = f"{port_file}.tmp"
    Path(temporary).write_text(f"{port}\n")
    os.replace(temporary, port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["stall", "scripted"])
    parser.add_argument("--port-file", required=True, help="file the bound port is written to")
    parser.add_argument("--upstream", help="HOST:PORT of the real leaf behind a stall proxy")
    parser.add_argument("--stall-ms", type=float, default=200.0, help="stall of every predict call (default %(default)s)")
    parser.add_argument("--start-fast", action="store_true", help="stall mode: start with the stall off (SIGUSR2 turns it on)")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="scripted mode: largest reply delay (default %(default)s)")
    parser.add_argument("--model-version", default="1", help="scripted mode: model version in replies (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="scripted mode: seed of the delays (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s fault-{args.mode}[%(process)d] %(levelname)s %(name)s: %(message)s")

    registry = CollectorRegistry()
    counters = FaultCounters(registry)
    if args.mode == "stall":
        if not args.upstream:
            parser.error("stall mode needs --upstream HOST:PORT")
        asyncio.run(_serve_thrift(StallingProxy(args.upstream, args.stall_ms, counters, stalling=not args.start_fast), registry, args.port_file))
    else:
        asyncio.run(_serve_thrift(ScriptedLeaf(args.max_delay_ms, args.model_version, counters, args.seed), registry, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
