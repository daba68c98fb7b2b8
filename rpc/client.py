"""Pooled async Thrift-over-HTTP client with a deadline on every call.

Safety invariant: a reply is only ever read by the call that sent the request. HTTP/1.1 without
pipelining carries one call per connection at a time; a call that times out or is cancelled
before its reply was read closes its connection instead of returning it to the pool; and every
reply's method name and sequence id are checked against the call, so even a misbehaving peer
cannot hand one call's reply to another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import aiohttp

from rpc import codec
from rpc.errors import CallTimeout, TransportError
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
        host, port = parse_address(address)
        self.address = address
        self._url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{THRIFT_PATH}"
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._seqids = itertools.count(1)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=None)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                auto_decompress=False,
            )
        return self._session

    async def call(self, method: str, *, timeout_s: float, **arguments: Any) -> Any:
        """Call ``method`` and return its result, raising its typed Thrift exception or an ``RpcError``.

        ``timeout_s`` bounds the whole call, connection included; past it ``CallTimeout`` is raised
        and the connection is closed.
        """
        if timeout_s <= 0:
            raise CallTimeout(f"{method} to {self.address}: no time left (timeout {timeout_s * 1000:.1f} ms)")
        seqid = next(self._seqids) & 0x7FFFFFFF
        body = codec.encode_call(method, seqid, **arguments)
        session = self._ensure_session()
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(timeout_s):
                response = await session.post(self._url, data=body, headers={"Content-Type": CONTENT_TYPE})
                payload = await response.read()
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address} timed out after {timeout_s * 1000:.1f} ms") from None
        except aiohttp.ClientError as error:
            raise TransportError(f"{method} to {self.address} failed: {type(error).__name__}: {error}") from None
        finally:
            # A response whose body was not read to the end must not go back to the pool.
            if response is not None and not response.closed and response.content.at_eof() is False:
                response.close()
        if response.status != 200:
            raise TransportError(f"{method} to {self.address} returned HTTP {response.status}: {payload[:200]!r}")
        return codec.decode_reply(payload, method, seqid)

    async def predict(self, request: Any, *, timeout_s: float) -> Any:
        return await self.call("predict", timeout_s=timeout_s, request=request)

    async def health(self, *, timeout_s: float = 1.0) -> Any:
        return await self.call("health", timeout_s=timeout_s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
