"""A small HTTP/1.1 client for Thrift calls: keep-alive connections that POST one body and read one reply.

The wire is the same as any HTTP client's: ``POST /thrift`` with ``Content-Length``. A call
writes one preformatted request head and parses only the status line and the three headers it
needs. It builds none of aiohttp's request, URL, cookie and header objects. On the 2-core
development machines this cut the client CPU of a 100-glance leaf call from about 0.8 ms to
about 0.4 ms; ``docs/benchmarks.md`` has the measurement.

Safety invariant: a connection carries one request at a time. It goes back to the idle list
only after the whole reply (``Content-Length`` bytes, nothing more) was read and the server did
not ask to close; any error, timeout or cancellation closes it, so a late reply can never be read
by the next call. Bytes that arrive while no request is waiting close the connection too.
"""

from __future__ import annotations

import asyncio
import socket

__all__ = ["ConnectFailed", "ConnectionClosed", "MalformedResponse", "Http1Pool"]

# Largest status line plus headers accepted from a server.
MAX_HEAD_BYTES = 64 * 1024


class ConnectFailed(OSError):
    """No connection could be opened (refused, unreachable, or the connect timeout passed)."""


class ConnectionClosed(ConnectionError):
    """The connection closed before the whole reply arrived.

    ``before_reply`` is True when no byte of the reply came. ``reused`` is True when the
    connection had served an earlier call, so the server may have closed it while it was idle.
    """

    def __init__(self, message: str, *, before_reply: bool, reused: bool = False):
        super().__init__(message)
        self.before_reply = before_reply
        self.reused = reused


class MalformedResponse(ValueError):
    """The server's reply is not an HTTP/1.x response this client reads (bad head, chunked body, extra bytes)."""


def _header_value(lowered_head: bytes, marker: bytes) -> bytes | None:
    """Return the stripped value of the header line starting with ``marker`` (``\\r\\nname:``), or None."""
    start = lowered_head.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = lowered_head.find(b"\r\n", start)
    return (lowered_head[start:] if end < 0 else lowered_head[start:end]).strip()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a whole request and returns (status, body, keep_alive)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._head_length: int | None = None
        self._content_length: int | None = None
        self._status = 0
        self._keep_alive = True

    # ---- asyncio.Protocol ---------------------------------------------------------------------

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
        self._buffer += data
        try:
            self._try_complete(waiter)
        except MalformedResponse as error:
            waiter.set_exception(error)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_length is not None and self._content_length is None:
            # No Content-Length: the body ran to the end of the connection.
            waiter.set_result((self._status, bytes(self._buffer[self._head_length :]), False))
            return
        before_reply = not self._buffer
        reason = f": {exc}" if exc else ""
        waiter.set_exception(ConnectionClosed(f"connection closed {'before the reply' if before_reply else 'in the middle of the reply'}{reason}",
                                              before_reply=before_reply))

    # ---- requests -----------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise MalformedResponse(f"invalid HTTP status line {status_line[:80]!r}")
        self._status = int(parts[1])
        self._keep_alive = parts[0] == b"HTTP/1.1"
        if line_end < 0:
            self._keep_alive = False
            return
        # Only three headers matter here; the lower-cased head is searched for each of them.
        lowered = head[line_end:].lower()
        length = _header_value(lowered, b"\r\ncontent-length:")
        if length is not None:
            if not length.isdigit():
                raise MalformedResponse(f"invalid Content-Length {length[:40]!r}")
            self._content_length = int(length)
        connection = _header_value(lowered, b"\r\nconnection:")
        if connection is not None:
            if b"close" in connection:
                self._keep_alive = False
            elif b"keep-alive" in connection:
                self._keep_alive = True
        encoding = _header_value(lowered, b"\r\ntransfer-encoding:")
        if encoding is not None and encoding != b"identity":
            raise MalformedResponse(f"Transfer-Encoding {encoding[:40]!r} is not supported; the server must send Content-Length")
        if self._content_length is None:
            self._keep_alive = False

    def _try_complete(self, waiter: asyncio.Future) -> None:
        buffer = self._buffer
        if self._head_length is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"HTTP response head exceeds {MAX_HEAD_BYTES} bytes")
                return
            self._parse_head(bytes(buffer[:end]))
            self._head_length = end + 4
        if self._content_length is None:
            return
        end = self._head_length + self._content_length
        if len(buffer) < end:
            return
        if len(buffer) > end:
            raise MalformedResponse(f"{len(buffer) - end} bytes arrived after the reply's {self._content_length}-byte body")
        waiter.set_result((self._status, bytes(buffer[self._head_length : end]), self._keep_alive))

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes, bool]:
        if self.closed or self.transport is None:
            raise ConnectionClosed("connection closed before the request was sent", before_reply=True)
        self._buffer = bytearray()
        self._head_length = None
        self._content_length = None
        self._status = 0
        self._keep_alive = True
        waiter = self._loop.create_future()
        self._waiter = waiter
        self.transport.writelines((head, body))
        try:
            return await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive connections to one ``host:port``, at most ``limit`` busy at once; one event loop only."""

    def __init__(self, host: str, port: int, *, path: str, content_type: str, limit: int = 64, connect_timeout_s: float = 1.0):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        host_header = f"[{host}]" if ":" in host else host
        self._head_prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\nContent-Type: {content_type}\r\nContent-Length: "
        ).encode("ascii")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {self.host}:{self.port} timed out after {self._connect_timeout_s * 1000:.0f} ms") from None
        except OSError as error:
            raise ConnectFailed(f"connecting to {self.host}:{self.port} failed: {error}") from None
        return connection

    def _pop_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def post(self, body: bytes, *, fresh: bool = False) -> tuple[int, bytes]:
        """Send ``body`` and return (HTTP status, reply body); ``fresh`` opens a new connection instead of reusing an idle one."""
        if self._closed:
            raise ConnectionClosed(f"client of {self.host}:{self.port} is closed", before_reply=True)
        async with self._slots:
            connection = None if fresh else self._pop_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            head = self._head_prefix + b"%d\r\n\r\n" % len(body)
            try:
                status, payload, keep_alive = await connection.request(head, body)
            except ConnectionClosed as error:
                connection.close()
                error.reused = reused
                raise
            except BaseException:
                connection.close()
                raise
            if keep_alive and not connection.closed and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()
            return status, payload

    def close(self) -> None:
        """Close every idle connection; busy ones close when their call ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
