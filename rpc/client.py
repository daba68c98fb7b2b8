"""Pooled async Thrift-over-HTTP client with a deadline on every call.

Safety invariant: a reply is only ever read by the call that sent the request. HTTP/1.1 without
pipelining carries one call per connection at a time; a call that times out or is cancelled
before its reply was read closes its connection instead of returning it to the pool; and every
reply's method name and sequence id are checked against the call, so even a misbehaving peer
cannot hand one call's reply to another.

Every method of the service only reads, so a call whose pooled connection was closed by the
server before any reply byte arrived (a keep-alive race, or a server that is draining) is sent
once more on a fresh connection within the same timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from rpc import codec
from rpc.errors import CallTimeout, TransportError
from rpc.http1 import ConnectFailed, ConnectionClosed, Http1Pool, MalformedResponse
from rpc.server import CONTENT_TYPE, THRIFT_PATH

__all__ = ["ThriftHttpClient", "parse_address"]

logger = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {address!r}; expected HOST:PORT with a port in 1..65535")
    return host.strip("[]"), int(port)


class ThriftHttpClient:
    """Client of one server address; safe to share between concurrent tasks of one event loop."""

    def __init__(
        self,
        address: str,
        *,
        pool_size: int = 64,
        connect_timeout_s: float = 1.0,
    ):
        self._host, self._port = parse_address(address)
        self.address = address
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: Http1Pool | None = None
        self._seqids = itertools.count(1)

    def _ensure_pool(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(
                self._host, self._port, path=THRIFT_PATH, content_type=CONTENT_TYPE,
                limit=self._pool_size, connect_timeout_s=self._connect_timeout_s,
            )
        return self._pool

    async def call(self, method: str, *, timeout_s: float, **arguments: Any) -> Any:
        """Call ``method`` and return its result, raising its typed Thrift exception or an ``RpcError``.

        ``timeout_s`` bounds the whole call, connection included; past it ``CallTimeout`` is raised
        and the connection is closed.
        """
        if timeout_s <= 0:
            raise CallTimeout(f"{method} to {self.address}: no time left (timeout {timeout_s * 1000:.1f} ms)")
        seqid = next(self._seqids) & 0x7FFFFFFF
        body = codec.encode_call(method, seqid, **arguments)
        pool = self._ensure_pool()
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    status, payload = await self._post(pool, body, fresh=False)
                except ConnectionClosed as error:
                    if not (error.before_reply and error.reused):
                        raise
                    logger.debug("%s to %s: pooled connection closed before the reply (%s); sending once more", method, self.address, error)
                    status, payload = await self._post(pool, body, fresh=True)
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address} timed out after {timeout_s * 1000:.1f} ms") from None
        except (ConnectFailed, ConnectionClosed, MalformedResponse) as error:
            raise TransportError(f"{method} to {self.address} failed: {type(error).__name__}: {error}") from None
        if status != 200:
            raise TransportError(f"{method} to {self.address} returned HTTP {status}: {payload[:200]!r}")
        return codec.decode_reply(payload, method, seqid)

    @staticmethod
    async def _post(pool: Http1Pool, body: bytes, *, fresh: bool) -> tuple[int, bytes]:
        # Http1Pool closes a connection whose reply was not read to the end (timeout,
        # cancellation, error) instead of returning it to the pool.
        return await pool.post(body, fresh=fresh)

    async def predict(self, request: Any, *, timeout_s: float) -> Any:
        return await self.call("predict", timeout_s=timeout_s, request=request)

    async def health(self, *, timeout_s: float = 1.0) -> Any:
        return await self.call("health", timeout_s=timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
