"""The call path that the HTTP and the framed Thrift clients share: deadline, one resend, typed errors.

A subclass owns a connection pool, exchanges one encoded call for its reply (``_exchange``)
and names the pool errors that mean the transport failed. Every method of the service only
reads, so resending a call is safe. When the server closed a pooled connection before any reply
byte arrived (a keep-alive race, or a draining server), the call is sent once more on a fresh
connection within the same deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, ClassVar, Generic, TypeVar

from rpc import codec
from rpc.errors import CallTimeout, TransportError

__all__ = ["PooledThriftClient"]

logger = logging.getLogger(__name__)

Pool = TypeVar("Pool")


class PooledThriftClient(Generic[Pool]):
    """Base of a client of one server address; safe to share between tasks of one event loop."""

    # The pool's exception for a connection closed under a call. It carries ``before_reply``
    # (no reply byte had arrived) and ``reused`` (the connection came from the idle list).
    closed_error: ClassVar[type[BaseException]]
    # Pool exceptions that become a ``TransportError`` (``closed_error`` among them).
    transport_errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, address: str) -> None:
        self.address = address
        self._pool: Pool | None = None
        self._seqids = itertools.count(1)

    def _new_pool(self) -> Pool:
        raise NotImplementedError

    async def _exchange(self, pool: Pool, message: bytes, *, method: str, fresh: bool) -> bytes:
        """Send one encoded call of ``method`` and return the encoded reply; ``fresh`` skips idle connections."""
        raise NotImplementedError

    def _close_pool(self, pool: Pool) -> None:
        raise NotImplementedError

    def _reason(self, error: BaseException) -> str:
        """Return the text of a pool error inside the ``TransportError`` message."""
        return str(error)

    def _ensure_pool(self) -> Pool:
        if self._pool is None:
            self._pool = self._new_pool()
        return self._pool

    async def call(self, method: str, *, timeout_s: float, **arguments: Any) -> Any:
        """Call ``method`` and return its result, raising its typed Thrift exception or an ``RpcError``.

        ``timeout_s`` bounds the whole call, connection included; past it ``CallTimeout`` is raised
        and the connection is closed.
        """
        if timeout_s <= 0:
            raise CallTimeout(f"{method} to {self.address}: no time left (timeout {timeout_s * 1000:.1f} ms)")
        seqid = next(self._seqids) & 0x7FFFFFFF
        message = codec.encode_call(method, seqid, **arguments)
        pool = self._ensure_pool()
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    reply = await self._exchange(pool, message, method=method, fresh=False)
                except self.closed_error as error:
                    if not (getattr(error, "before_reply", False) and getattr(error, "reused", False)):
                        raise
                    logger.debug("%s to %s: pooled connection closed before the reply (%s); sending once more", method, self.address, error)
                    reply = await self._exchange(pool, message, method=method, fresh=True)
        except TimeoutError:
            raise CallTimeout(f"{method} to {self.address} timed out after {timeout_s * 1000:.1f} ms") from None
        except self.transport_errors as error:
            raise TransportError(f"{method} to {self.address} failed: {self._reason(error)}") from None
        return codec.decode_reply(reply, method, seqid)

    async def predict(self, request: Any, *, timeout_s: float) -> Any:
        return await self.call("predict", timeout_s=timeout_s, request=request)

    async def health(self, *, timeout_s: float = 1.0) -> Any:
        return await self.call("health", timeout_s=timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            self._close_pool(self._pool)
            self._pool = None
