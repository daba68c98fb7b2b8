"""Process runtime of one server (L0, L1 or leaf): start, serve, drain on SIGTERM, exit 0.

Order on start: bind the port (liveness passes), write the port file, start the handler's
background work (client pools, health checks), load what the handler needs (readiness turns true
when done). Order on SIGTERM or SIGINT: readiness false, keep serving for the drain grace period,
stop accepting, finish in-flight calls within the drain timeout (cancel the rest), close the
handler's client pools, return so the command exits 0. A second signal while draining is logged
and changes nothing: the drain timeout already bounds the stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

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
) -> None:
    """Serve ``handler`` until SIGTERM or SIGINT, then drain and return."""
    server = ThriftHttpServer(handler, config, registry=registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    port = await server.start()
    if port_file:
        temporary = Path(f"{port_file}.tmp")
        temporary.write_text(f"{port}\n")
        os.replace(temporary, port_file)
    if hasattr(handler, "start"):
        await handler.start()
    if load is not None:
        try:
            await asyncio.to_thread(load)
        except Exception:
            logger.exception("%s failed to load; exiting", handler.tier)
            await server.stop()
            raise
    logger.info("%s ready on port %d", handler.tier, port)

    await stop.wait()
    logger.info("%s received a stop signal; draining", handler.tier)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, logger.info, "%s is already draining; signal ignored", handler.tier)
    # Readiness turns false first: both the /readyz route and the Thrift health call report it.
    handler.draining = True
    try:
        await server.stop()
    finally:
        if hasattr(handler, "close"):
            await handler.close()
    logger.info("%s closed its client pools; exiting", handler.tier)
