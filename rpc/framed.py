"""Framed Thrift transport: binary-protocol messages, each behind a 4-byte big-endian length.

This is Thrift's standard framed transport (``TFramedTransport``), so any Thrift client or
server configured for framed binary protocol talks to ``rpc.framed_server`` and
``rpc.framed_client``. A frame is the length of the message in bytes (unsigned 32-bit, big
endian) followed by the message itself: the same bytes ``rpc.codec`` puts in an HTTP body.

Addresses name their transport: ``framed://HOST:PORT`` is a framed listener, plain
``HOST:PORT`` is the Thrift-over-HTTP endpoint ``POST /thrift``. ``client_for`` builds the
matching client.
"""

from __future__ import annotations

import struct

__all__ = ["FRAME_HEADER", "FRAMED_SCHEME", "split_transport", "client_for"]

# Length prefix of every frame.
FRAME_HEADER = struct.Struct("!I")
FRAMED_SCHEME = "framed://"


def split_transport(address: str) -> tuple[str, str]:
    """Return (transport, HOST:PORT) of an address: ("framed", ...) or ("http", ...)."""
    if address.startswith(FRAMED_SCHEME):
        return "framed", address[len(FRAMED_SCHEME) :]
    if "://" in address:
        scheme = address.split("://", 1)[0]
        raise ValueError(f"invalid address {address!r}: unknown scheme {scheme!r}; expected {FRAMED_SCHEME}HOST:PORT or HOST:PORT")
    return "http", address


def client_for(address: str, *, pool_size: int = 64, connect_timeout_s: float = 1.0) -> object:
    """Return a ``ThriftFramedClient`` for ``framed://HOST:PORT`` and a ``ThriftHttpClient`` otherwise.

    Both have the same interface: ``call``, ``predict``, ``health`` and ``close``.
    """
    transport, host_port = split_transport(address)
    if transport == "framed":
        from rpc.framed_client import ThriftFramedClient

        return ThriftFramedClient(address, pool_size=pool_size, connect_timeout_s=connect_timeout_s)
    from rpc.client import ThriftHttpClient

    return ThriftHttpClient(host_port, pool_size=pool_size, connect_timeout_s=connect_timeout_s)
