"""Framed Thrift server on a plain asyncio ``Protocol``: the cheap listener of the L1 -> leaf hop.

It serves the same ``Handler`` as ``rpc.server.ThriftHttpServer`` and shares its steps between
the bytes and the handler (``rpc.server.CallDispatcher``). Those are ``rpc.wire_check`` before
decoding, ``InvalidRequest`` for a wrongly typed field, ``DeadlineExceeded`` for a budget that
ran out while the call was read, and application exceptions for malformed calls. Both servers
report into the same Prometheus metrics. There is no HTTP, so it has no health, readiness or metrics routes: those stay on the
HTTP port of the same process.

Contract:
- frames on one connection get their replies one at a time, in order;
- a frame longer than ``ServerConfig.max_body_bytes`` gets the method's typed ``InvalidRequest``
  naming the frame size and the limit. Other methods and unreadable headers get a
  protocol-error application exception instead. The rest of that frame is read and dropped,
  then the connection closes;
- a malformed message gets an application exception and the connection closes after the reply;
- a connection that half-closes in the middle of a frame gets a protocol-error application
  exception and is closed;
- a frame that has not fully arrived ``ServerConfig.frame_read_timeout_s`` after its first byte
  closes the connection without a reply (counted as malformed);
- when the caller disconnects, its handler is cancelled (``cancel_on_disconnect``);
- ``stop()`` drains: calls keep being served for ``drain_grace_s``, each reply then closing its
  connection, then the listening socket and idle connections close, in-flight calls finish
  within ``drain_timeout_s`` and the rest are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from prometheus_client import CollectorRegistry
from thriftpy2.thrift import TApplicationException

from rpc import codec
from rpc.deadline import receiving_call
from rpc.framed import FRAME_HEADER
from rpc.metrics import RpcMetrics
from rpc.ratelimit import RateLimitedLog
from rpc.server import CallDispatcher, Handler, ServerConfig, too_large_message

__all__ = ["ThriftFramedServer"]

logger = logging.getLogger(__name__)

# Bytes of an oversized frame that are decoded to find its method name and sequence id.
_PREFIX_BYTES = 4096
# Maximum time spent reading and dropping the rest of an oversized frame before closing.
_DISCARD_TIMEOUT_S = 2.0


class _FramedConnection(asyncio.Protocol):
    """One client connection: splits frames and runs one call at a time."""

    def __init__(self, server: "ThriftFramedServer"):
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self._buffer = bytearray()
        # Monotonic time the first byte of the frame at the head of the buffer arrived.
        self._frame_started = 0.0
        self.task: asyncio.Task | None = None
        self.closed = False
        self._paused = False
        # Bytes of an oversized frame still to be read and dropped.
        self._discard = 0
        # Armed while an incomplete frame waits in the buffer (see ``_check_read_time``).
        self._read_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._discard:
            self._discard -= min(self._discard, len(data))
            if not self._discard:
                self.close()
            return
        if self.closed:
            return
        if not self._buffer:
            self._frame_started = time.monotonic()
        self._buffer += data
        if self.task is None:
            self._next_frame()
        elif len(self._buffer) > self._server.config.max_body_bytes + FRAME_HEADER.size and not self._paused:
            # A caller that sends frames without waiting for replies is held back here.
            self._paused = True
            self.transport.pause_reading()
        # Only an incomplete frame arms the timer; a frame that arrives whole costs nothing.
        self._arm_read_timer()

    def _check_read_time(self) -> None:
        self._read_timer = None
        if self.closed or not self._buffer or self.task is not None or self._discard:
            return
        waited = time.monotonic() - self._frame_started
        limit = self._server.config.frame_read_timeout_s
        if waited < limit:
            self._read_timer = self._loop.call_later(limit - waited, self._check_read_time)
            return
        self._server.metrics.malformed.inc()
        self._server.errors.warning(
            "framed connection from %s closed: a frame of %d bytes so far did not complete within %.1f s (frame_read_timeout_s)",
            self.peer, len(self._buffer), limit,
        )
        self.close()

    def eof_received(self) -> bool:
        if self._buffer and self.task is None and not self._discard:
            self._reject_truncated()
        # False closes the transport once the pending writes are sent.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._server.connections.discard(self)
        task = self.task
        if task is not None and not task.done() and self._server.config.cancel_on_disconnect:
            task.cancel()

    # ---- frames -------------------------------------------------------------------------------

    def _next_frame(self) -> None:
        buffer = self._buffer
        if len(buffer) < FRAME_HEADER.size or self.closed:
            return
        length = FRAME_HEADER.unpack_from(buffer)[0]
        if length > self._server.config.max_body_bytes:
            self._reject_oversized(length)
            return
        end = FRAME_HEADER.size + length
        if len(buffer) < end:
            return
        body = bytes(buffer[FRAME_HEADER.size : end])
        del buffer[:end]
        started = self._frame_started
        if buffer:
            # The next frame's bytes came with this one's; count its reading from now.
            self._frame_started = time.monotonic()
        self.task = self._loop.create_task(self._serve(body, started))

    async def _serve(self, body: bytes, started: float) -> None:
        server = self._server
        server.in_flight_count += 1
        method, outcome = "unknown", "ok"
        close_after = server.draining
        try:
            try:
                method, seqid, args = codec.decode_call(body)
            except codec.DecodeError as error:
                reply, method, outcome = server.dispatcher.decode_error_reply(error, self.peer)
                close_after = True
            else:
                with receiving_call(started):
                    reply, outcome = await server.dispatcher.dispatch(method, seqid, args, started)
                # Draining may have begun while the handler ran.
                close_after = close_after or server.draining
            self.send(reply)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if server.draining:
                server.cancelled_while_draining += 1
            raise
        finally:
            server.in_flight_count -= 1
            if server.draining and outcome != "cancelled":
                server.answered_while_draining += 1
            server.metrics.observe(method, outcome, time.monotonic() - started)
            self.task = None
        if close_after:
            self.close()
            return
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if self._buffer:
            self._next_frame()
        self._arm_read_timer()

    def _arm_read_timer(self) -> None:
        """Start the frame read timer when an incomplete frame waits in the buffer."""
        if self._buffer and self.task is None and self._read_timer is None and not self.closed:
            self._read_timer = self._loop.call_later(self._server.config.frame_read_timeout_s, self._check_read_time)

    def send(self, message: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(FRAME_HEADER.pack(len(message)) + message)

    def _reject_oversized(self, length: int) -> None:
        server = self._server
        limit = server.config.max_body_bytes
        prefix = bytes(self._buffer[FRAME_HEADER.size : FRAME_HEADER.size + _PREFIX_BYTES])
        received = len(self._buffer) - FRAME_HEADER.size
        self._buffer.clear()
        message = too_large_message(f"frame of {length} bytes", limit)
        server.errors.warning("frame of %d bytes from %s rejected: the limit is %d bytes", length, self.peer, limit)
        self.send(server.dispatcher.too_large_reply(prefix, message))
        server.metrics.observe("unknown", "invalid", time.monotonic() - self._frame_started)
        self._discard = length - received
        if self._discard <= 0:
            self.close()
            return
        # Reading the rest lets the caller finish its write and read the reply; a peer that
        # stops sending is cut off after the timeout.
        self._loop.call_later(_DISCARD_TIMEOUT_S, self.close)

    def _reject_truncated(self) -> None:
        server = self._server
        buffer = bytes(self._buffer)
        self._buffer.clear()
        if len(buffer) < FRAME_HEADER.size:
            message = f"connection ended after {len(buffer)} bytes of a 4-byte frame length"
            prefix = b""
        else:
            length = FRAME_HEADER.unpack_from(buffer)[0]
            message = f"connection ended after {len(buffer) - FRAME_HEADER.size} bytes of a {length}-byte frame"
            prefix = buffer[FRAME_HEADER.size :]
        try:
            method, seqid, _ = codec.decode_call(prefix)
        except codec.DecodeError as error:
            method, seqid = error.name, error.seqid
        server.metrics.malformed.inc()
        server.errors.warning("truncated frame from %s: %s", self.peer, message)
        self.send(codec.encode_application_error(method, seqid, TApplicationException.PROTOCOL_ERROR, message))

    def close(self) -> None:
        self.closed = True
        self._discard = 0
        if self.transport is not None:
            self.transport.close()


class ThriftFramedServer:
    """Serve a ``Handler`` over framed Thrift (binary protocol) on one TCP port.

    Pass the process's HTTP server's ``RpcMetrics`` as ``metrics`` so both listeners report into
    the same series. Without it a new set is registered in ``registry``.
    """

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig,
        *,
        metrics: RpcMetrics | None = None,
        registry: CollectorRegistry | None = None,
    ):
        self.handler = handler
        self.config = config
        self.metrics = metrics or RpcMetrics(registry or CollectorRegistry(), tier=handler.tier)
        self.errors = RateLimitedLog(logger, interval_s=5.0)
        self.dispatcher = CallDispatcher(handler, self.metrics, self.errors)
        self.draining = False
        self.connections: set[_FramedConnection] = set()
        self.in_flight_count = 0
        self.answered_while_draining = 0
        self.cancelled_while_draining = 0
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    @property
    def in_flight(self) -> int:
        """Calls being handled right now."""
        return self.in_flight_count

    async def start(self) -> int:
        """Start listening and return the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _FramedConnection(self), self.config.host, self.config.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("%s framed Thrift listening on %s:%d", self.handler.tier, self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Drain and stop: grace period, stop accepting, close idle connections, wait for calls, close."""
        if self._server is None:
            return
        self.draining = True
        config = self.config
        logger.info(
            "%s framed listener draining: %d calls in flight, grace %.1f s, timeout %.1f s",
            self.handler.tier, self.in_flight_count, config.drain_grace_s, config.drain_timeout_s,
        )
        started = time.monotonic()
        if config.drain_grace_s > 0:
            await asyncio.sleep(config.drain_grace_s)

        self._server.close()
        # Idle connections close now; a busy one closes after its reply (``_serve`` checks
        # ``draining``). Bytes of a frame that was still arriving are dropped, so its caller
        # sees the connection close before any reply byte.
        for connection in list(self.connections):
            if connection.task is None:
                connection.close()

        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=config.drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

        for connection in list(self.connections):
            connection.close()
        self._server = None
        logger.info(
            "%s framed listener stopped after %.2f s: %d calls replied to while draining, %d cancelled at the drain timeout",
            self.handler.tier, time.monotonic() - started, self.answered_while_draining, self.cancelled_while_draining,
        )
