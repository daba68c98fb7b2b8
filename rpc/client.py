"""Pooled async Thrift-over-HTTP client with a deadline on every call.

Safety invariant: a reply is only ever read by the call that sent the request. HTTP/1.1 without
pipelining carries one call per connection at a time; a call that times out or is cancelled
before its reply was read closes its connection instead of returning it to the pool; and every
reply's method name and sequence id are checked against the call, so even a misbehaving peer
cannot hand one call's reply to another.

The deadline, the one resend on a connection the server closed before replying, and the
typed errors come from ``rpc.pooled_client``.
"""

from __future__ import annotations

from rpc.errors import TransportError
from rpc.http1 import ConnectFailed, ConnectionClosed, Http1Pool, MalformedResponse
from rpc.pooled_client import PooledThriftClient
from rpc.server import CONTENT_TYPE, THRIFT_PATH

__all__ = ["ThriftHttpClient", "parse_address"]


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {address!r}; expected HOST:PORT with a port in 1..65535")
    return host.strip("[]"), int(port)


class ThriftHttpClient(PooledThriftClient[Http1Pool]):
    """Client of one ``HOST:PORT`` address; safe to share between concurrent tasks of one event loop."""

    closed_error = ConnectionClosed
    transport_errors = (ConnectFailed, ConnectionClosed, MalformedResponse)

    def __init__(
        self,
        address: str,
        *,
        pool_size: int = 64,
        connect_timeout_s: float = 1.0,
    ):
        super().__init__(address)
        self._host, self._port = parse_address(address)
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s

    def _new_pool(self) -> Http1Pool:
        return Http1Pool(
            self._host, self._port, path=THRIFT_PATH, content_type=CONTENT_TYPE,
            limit=self._pool_size, connect_timeout_s=self._connect_timeout_s,
        )

    async def _exchange(self, pool: Http1Pool, message: bytes, *, method: str, fresh: bool) -> bytes:
        # Http1Pool closes a connection whose reply was not read to the end (timeout,
        # cancellation, error) instead of returning it to the pool.
        status, payload = await pool.post(message, fresh=fresh)
        if status != 200:
            raise TransportError(f"{method} to {self.address} returned HTTP {status}: {payload[:200]!r}")
        return payload

    def _close_pool(self, pool: Http1Pool) -> None:
        pool.close()

    def _reason(self, error: BaseException) -> str:
        return f"{type(error).__name__}: {error}"
