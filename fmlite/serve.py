"""Process runtime of one server (L0, L1 or leaf): start, serve, drain on SIGTERM, exit 0.

Order on start: bind the port (liveness passes) and the framed Thrift port if one is asked for,
write the port files, start the handler's background work (client pools, health checks), load
what the handler needs (readiness turns true when done). Order on SIGTERM or SIGINT: readiness
false, keep serving for the drain grace period, stop accepting, finish in-flight calls within
the drain timeout (cancel the rest), close the handler's client pools, return so the command
exits 0. Both listeners drain at the same time. A second signal while draining is logged
and changes nothing: the drain timeout already bounds the stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from rpc.framed_server import ThriftFramedServer
from rpc.server import ServerConfig, ThriftHttpServer

__all__ = ["run_server", "install_event_loop", "configure_logging"]

logger = logging.getLogger(__name__)


def configure_logging(role: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def install_event_loop() -> str:
    """Use uvloop when it is installed; return the loop implementation's name."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a base dependency on Linux
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def run_server(
    handler: Any,
    config: ServerConfig,
    *,
    registry: CollectorRegistry,
    port_file: str | None = None,
    load: Callable[[], None] | None = None,
    framed_port: int | None = None,
    framed_port_file: str | None = None,
) -> None:
    """Serve ``handler`` until SIGTERM or SIGINT, then drain and return.

    With ``framed_port`` set, the handler is also served over framed Thrift on that port of the
    same host (0 picks a free port), and the bound port is written to ``framed_port_file``.
    """
    server = ThriftHttpServer(handler, config, registry=registry)
    framed = None
    if framed_port is not None:
        framed = ThriftFramedServer(handler, replace(config, port=framed_port), metrics=server.metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    port = await server.start()
    if framed is not None:
        try:
            bound = await framed.start()
        except OSError:
            await server.stop()
            raise
        if framed_port_file:
            _write_port_file(framed_port_file, bound)
    if port_file:
        _write_port_file(port_file, port)
    if hasattr(handler, "start"):
        await handler.start()
    if load is not None:
        try:
            await asyncio.to_thread(load)
        except Exception:
            logger.exception("%s failed to load; exiting", handler.tier)
            await _stop_all(server, framed)
            raise
    if framed is not None:
        logger.info("%s ready on port %d (HTTP) and port %d (framed Thrift)", handler.tier, port, framed.port)
    else:
        logger.info("%s ready on port %d", handler.tier, port)

    await stop.wait()
    logger.info("%s received a stop signal; draining", handler.tier)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, logger.info, "%s is already draining; signal ignored", handler.tier)
    # Readiness turns false first: both the /readyz route and the Thrift health call report it.
    handler.draining = True
    try:
        await _stop_all(server, framed)
    finally:
        if hasattr(handler, "close"):
            await handler.close()
    logger.info("%s closed its client pools; exiting", handler.tier)


def _write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically, so a reader never sees a partial file."""
    temporary = Path(f"{path}.tmp")
    temporary.write_text(f"{port}\n")
    os.replace(temporary, path)


async def _stop_all(server: ThriftHttpServer, framed: ThriftFramedServer | None) -> None:
    """Drain the HTTP and the framed listener at the same time."""
    if framed is None:
        await server.stop()
        return
    await asyncio.gather(server.stop(), framed.stop())
