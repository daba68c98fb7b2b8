"""Pooled async framed-Thrift client with a deadline on every call; same interface as ``ThriftHttpClient``.

Safety invariant: a reply is only ever read by the call that sent the request. A connection
carries one call at a time and goes back to the idle list only after exactly one whole reply
frame was read. A call that times out, is cancelled or fails closes its connection, and bytes
that arrive while no call waits, or after the reply frame, close it too, so a late reply can
never be read by a later call. Every reply's method name and sequence id are also checked
against the call (``codec.decode_reply``).

The deadline, the one resend on a connection the server closed before replying, and the
typed errors come from ``rpc.pooled_client``.
"""

from __future__ import annotations

import asyncio
import socket

from rpc.client import parse_address
from rpc.framed import FRAME_HEADER, split_transport
from rpc.pooled_client import PooledThriftClient

__all__ = ["ThriftFramedClient", "FramedPool", "DEFAULT_MAX_REPLY_BYTES"]

# Largest reply frame accepted. A 1,000-glance predict reply is about 10 KB; a larger length
# means the peer is not a framed Thrift server of this platform.
DEFAULT_MAX_REPLY_BYTES = 16 << 20


class _ConnectFailed(OSError):
    """No connection could be opened (refused, unreachable, or the connect timeout passed)."""


class _ConnectionClosed(ConnectionError):
    """The connection closed before the whole reply frame arrived.

    ``before_reply`` is True when no byte of the reply came; ``reused`` is True when the
    connection had served an earlier call.
    """

    def __init__(self, message: str, *, before_reply: bool, reused: bool = False):
        super().__init__(message)
        self.before_reply = before_reply
        self.reused = reused


class _MalformedReply(ValueError):
    """The reply frame is too long, or bytes arrived after it."""


class _FramedConnection(asyncio.Protocol):
    """One connection; ``request`` sends one frame and returns the reply frame's message."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_reply_bytes: int):
        self._loop = loop
        self._max_reply_bytes = max_reply_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nothing was asked: a stray or late reply. The connection cannot be trusted any more.
            self.close()
            return
        buffer = self._buffer
        buffer += data
        if len(buffer) < FRAME_HEADER.size:
            return
        length = FRAME_HEADER.unpack_from(buffer)[0]
        if length > self._max_reply_bytes:
            waiter.set_exception(_MalformedReply(f"reply frame of {length} bytes exceeds the limit of {self._max_reply_bytes} bytes"))
            self.close()
            return
        end = FRAME_HEADER.size + length
        if len(buffer) < end:
            return
        if len(buffer) > end:
            waiter.set_exception(_MalformedReply(f"{len(buffer) - end} bytes arrived after the {length}-byte reply frame"))
            self.close()
            return
        waiter.set_result(bytes(buffer[FRAME_HEADER.size :]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        before_reply = not self._buffer
        where = "before the reply" if before_reply else f"after {len(self._buffer)} bytes of the reply frame"
        reason = f": {exc}" if exc else ""
        waiter.set_exception(_ConnectionClosed(f"connection closed {where}{reason}", before_reply=before_reply))

    async def request(self, frame: bytes) -> bytes:
        if self.closed or self.transport is None:
            raise _ConnectionClosed("connection closed before the request was sent", before_reply=True)
        self._buffer = bytearray()
        waiter = self._loop.create_future()
        self._waiter = waiter
        self.transport.write(frame)
        try:
            return await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FramedPool:
    """Connections to one ``host:port``, at most ``limit`` busy at once; one event loop only."""

    def __init__(self, host: str, port: int, *, limit: int = 64, connect_timeout_s: float = 1.0,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        self._max_reply_bytes = max_reply_bytes
        self._idle: list[_FramedConnection] = []
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def _connect(self) -> _FramedConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _FramedConnection(loop, self._max_reply_bytes), self.host, self.port
                )
        except TimeoutError:
            raise _ConnectFailed(f"connecting to {self.host}:{self.port} timed out after {self._connect_timeout_s * 1000:.0f} ms") from None
        except OSError as error:
            raise _ConnectFailed(f"connecting to {self.host}:{self.port} failed: {error}") from None
        return connection

    def _pop_idle(self) -> _FramedConnection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def request(self, message: bytes, *, fresh: bool = False) -> bytes:
        """Send ``message`` in one frame and return the reply's message; ``fresh`` skips idle connections."""
        if self._closed:
            raise _ConnectionClosed(f"client of {self.host}:{self.port} is closed", before_reply=True)
        async with self._slots:
            connection = None if fresh else self._pop_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            try:
                reply = await connection.request(FRAME_HEADER.pack(len(message)) + message)
            except _ConnectionClosed as error:
                connection.close()
                error.reused = reused
                raise
            except BaseException:
                # Timeout, cancellation or a malformed reply: a late reply must never reach
                # the next call on this connection.
                connection.close()
                raise
            if connection.closed or self._closed:
                connection.close()
            else:
                self._idle.append(connection)
            return reply

    def close(self) -> None:
        """Close every idle connection; busy ones close when their call ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class ThriftFramedClient(PooledThriftClient[FramedPool]):
    """Client of one ``framed://HOST:PORT`` address; safe to share between tasks of one event loop."""

    closed_error = _ConnectionClosed
    transport_errors = (_ConnectFailed, _ConnectionClosed, _MalformedReply)

    def __init__(self, address: str, *, pool_size: int = 64, connect_timeout_s: float = 1.0,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        transport, host_port = split_transport(address)
        if transport != "framed":
            raise ValueError(f"invalid framed address {address!r}; expected framed://HOST:PORT")
        super().__init__(address)
        self._host, self._port = parse_address(host_port)
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._max_reply_bytes = max_reply_bytes

    def _new_pool(self) -> FramedPool:
        return FramedPool(self._host, self._port, limit=self._pool_size, connect_timeout_s=self._connect_timeout_s,
                          max_reply_bytes=self._max_reply_bytes)

    async def _exchange(self, pool: FramedPool, message: bytes, *, method: str, fresh: bool) -> bytes:
        return await pool.request(message, fresh=fresh)

    def _close_pool(self, pool: FramedPool) -> None:
        pool.close()
