"""Thrift over HTTP: the transport every tier uses (server, pooled async client, codec).

This package imports no tier. Tiers hand the server a handler object with async ``predict`` and
``health`` methods; the client calls any tier's ``/thrift`` endpoint.
"""

from rpc.idl import fmlite_thrift
from rpc.errors import RemoteError, TransportError, CallTimeout, ProtocolViolation

__all__ = ["fmlite_thrift", "RemoteError", "TransportError", "CallTimeout", "ProtocolViolation"]
