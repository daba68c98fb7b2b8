"""Client-side failures of a Thrift-over-HTTP call, by kind, so callers can decide on retries."""

from __future__ import annotations

__all__ = ["RpcError", "TransportError", "CallTimeout", "ProtocolViolation", "RemoteError"]


class RpcError(Exception):
    """Base class of every failure raised by ``rpc``."""


class TransportError(RpcError):
    """The call did not complete: connection refused or reset, or an HTTP status other than 200."""


class CallTimeout(RpcError):
    """The call's deadline passed before the reply arrived; its connection was closed, not reused."""


class ProtocolViolation(RpcError):
    """The peer's reply could not be decoded or belongs to another call (name or sequence id)."""


class RemoteError(RpcError):
    """The peer answered with a Thrift application exception (unknown method, malformed request)."""
