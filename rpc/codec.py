"""Encode and decode Thrift messages in the binary protocol (thriftpy2's compiled implementation).

A message is one HTTP body: the message header (method name, type, sequence id) followed by the
method's argument struct (calls) or result struct (replies). The decoder never trusts a call
body: ``rpc.wire_check`` walks it before thriftpy2 decodes it, and a truncated or random body,
an unknown method, a wrong message type or trailing bytes raise ``DecodeError`` with a reason
that the server returns as a Thrift application exception; a field sent with another wire type
than the IDL's raises ``FieldTypeError`` naming the field. Replies come from servers of this
platform and are decoded without the walk.
"""

from __future__ import annotations

import io
from typing import Any

from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport.buffered import TCyBufferedTransport
from thriftpy2.transport.memory import TCyMemoryBuffer

from rpc.errors import ProtocolViolation, RemoteError
from rpc.idl import fmlite_thrift
from rpc.wire_check import WireError, check_call

__all__ = [
    "SERVICE",
    "METHODS",
    "DecodeError",
    "encode_call",
    "decode_call",
    "encode_reply",
    "encode_application_error",
    "decode_reply",
    "FieldTypeError",
]

SERVICE = fmlite_thrift.PredictionService
METHODS = tuple(SERVICE.thrift_services)
# Nesting limit for structs, lists and maps while decoding untrusted bodies.
MAX_DEPTH = 16


class DecodeError(Exception):
    """A request body is not a well-formed Thrift call of this service."""

    def __init__(self, message: str, *, kind: int = TApplicationException.PROTOCOL_ERROR, name: str = "", seqid: int = 0):
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.seqid = seqid


class FieldTypeError(DecodeError):
    """A field of a call was sent with another wire type than the IDL declares; ``field`` names it."""

    def __init__(self, message: str, *, field: str, name: str, seqid: int):
        super().__init__(message, name=name, seqid=seqid)
        self.field = field


def _protocol(data: bytes = b"") -> tuple[TCyMemoryBuffer, TCyBinaryProtocol]:
    """Return a writer protocol over a memory buffer (for encoding only)."""
    buffer = TCyMemoryBuffer(data)
    return buffer, TCyBinaryProtocol(buffer, strict_read=True, strict_write=True, decode_response=True, max_depth=MAX_DEPTH)


def _reader(data: bytes) -> TCyBinaryProtocol:
    """Return a reader protocol that raises at the end of ``data``.

    thriftpy2's compiled memory buffer returns fewer bytes and no error for a read past its
    end, so a truncated body would decode into garbage; the buffered transport over a
    byte stream raises ``TTransportException`` instead.
    """
    transport = TCyBufferedTransport(io.BytesIO(data), buf_size=max(4096, len(data)))
    return TCyBinaryProtocol(transport, strict_read=True, strict_write=True, decode_response=True, max_depth=MAX_DEPTH)


def encode_call(method: str, seqid: int, **arguments: Any) -> bytes:
    """Return the body of a call of ``method`` with the given keyword arguments."""
    args = getattr(SERVICE, f"{method}_args")(**arguments)
    buffer, protocol = _protocol()
    protocol.write_message_begin(method, TMessageType.CALL, seqid)
    protocol.write_struct(args)
    protocol.write_message_end()
    return buffer.getvalue()


def decode_call(body: bytes) -> tuple[str, int, Any]:
    """Decode a call body into (method name, sequence id, argument struct)."""
    if not body:
        raise DecodeError("empty request body; expected a Thrift binary-protocol call")
    protocol = _reader(body)
    try:
        name, message_type, seqid = protocol.read_message_begin()
    except Exception as error:  # thriftpy2 raises several types for garbage input
        raise DecodeError(f"malformed Thrift message header: {error}") from None
    if isinstance(name, bytes):
        raise DecodeError("method name is not valid UTF-8", seqid=seqid)
    if message_type != TMessageType.CALL:
        raise DecodeError(
            f"message type {message_type} is not a call (1)",
            kind=TApplicationException.INVALID_MESSAGE_TYPE,
            name=name,
            seqid=seqid,
        )
    if name not in METHODS:
        raise DecodeError(
            f"unknown method {name!r}; this service has {', '.join(METHODS)}",
            kind=TApplicationException.UNKNOWN_METHOD,
            name=name,
            seqid=seqid,
        )
    args_class = getattr(SERVICE, f"{name}_args")
    # Strict header: version and type (4 bytes), name length (4), name, sequence id (4).
    arguments_start = 12 + len(name.encode("utf-8"))
    try:
        check_call(body, arguments_start, args_class, max_depth=MAX_DEPTH)
    except WireError as error:
        if error.field is not None:
            raise FieldTypeError(str(error), field=error.field, name=name, seqid=seqid) from None
        raise DecodeError(f"malformed arguments of {name}: {error}", name=name, seqid=seqid) from None
    args = args_class()
    try:
        protocol.read_struct(args)
    except Exception as error:
        raise DecodeError(f"malformed arguments of {name}: {error}", name=name, seqid=seqid) from None
    return name, seqid, args


def encode_reply(method: str, seqid: int, result: Any) -> bytes:
    """Return the body of a reply carrying ``method``'s result struct."""
    buffer, protocol = _protocol()
    protocol.write_message_begin(method, TMessageType.REPLY, seqid)
    protocol.write_struct(result)
    protocol.write_message_end()
    return buffer.getvalue()


def encode_application_error(method: str, seqid: int, kind: int, message: str) -> bytes:
    """Return the body of a Thrift application exception (unknown method, protocol error...)."""
    buffer, protocol = _protocol()
    protocol.write_message_begin(method, TMessageType.EXCEPTION, seqid)
    protocol.write_struct(TApplicationException(kind, message))
    protocol.write_message_end()
    return buffer.getvalue()


def decode_reply(body: bytes, method: str, seqid: int) -> Any:
    """Decode a reply to call ``seqid`` of ``method``: return its success value or raise its exception.

    Raises ``ProtocolViolation`` when the reply belongs to another method or sequence id, so a
    late reply can never be taken for the reply to a different call.
    """
    protocol = _reader(body)
    try:
        name, message_type, reply_seqid = protocol.read_message_begin()
    except Exception as error:
        raise ProtocolViolation(f"malformed reply header: {error}") from None
    if name != method or reply_seqid != seqid:
        raise ProtocolViolation(f"reply to {name!r} #{reply_seqid} received for call {method!r} #{seqid}")
    if message_type == TMessageType.EXCEPTION:
        error = TApplicationException()
        try:
            protocol.read_struct(error)
        except Exception as decode_error:
            raise ProtocolViolation(f"malformed application exception: {decode_error}") from None
        raise RemoteError(f"{method} failed at the peer: {error.message} (type {error.type})")
    if message_type != TMessageType.REPLY:
        raise ProtocolViolation(f"message type {message_type} is not a reply")
    result = getattr(SERVICE, f"{method}_result")()
    try:
        protocol.read_struct(result)
    except Exception as error:
        raise ProtocolViolation(f"malformed {method} result: {error}") from None
    if result.success is not None:
        return result.success
    for _, field_name, *_ in result.thrift_spec.values():
        if field_name != "success" and getattr(result, field_name, None) is not None:
            raise getattr(result, field_name)
    raise ProtocolViolation(f"{method} reply carries neither a result nor an exception")
