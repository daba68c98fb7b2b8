"""Structural check of a binary-protocol call body before thriftpy2 decodes it.

thriftpy2's compiled decoder (0.7.1) trusts the body in two ways that matter for a server:

- skipping a container whose element type has no wire width (STOP, VOID, or a code that is not
  a Thrift type) loops over its declared size without reading a byte, so a 20-byte body that
  declares a list of 2**31 such elements holds the event loop for tens of seconds;
- a field whose wire type differs from the IDL is skipped, and a list whose element type
  differs decodes as an empty list, so a wrongly typed field looks like a missing one.

``check_call`` walks the whole body first, with the IDL of the called method, and raises
``WireError`` for a truncated body, a negative length, a container of an invalid element type,
nesting deeper than ``max_depth``, bytes after the end of the message, or a field sent with a
wire type other than the IDL's. The walk costs a few microseconds per field; the one large field,
a list of strings, is checked without a Python step per element when every element has 1 to 255
bytes and no NUL byte (a list of valid glance ids always does), by locating the three zero bytes
that open each length prefix with NumPy.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from thriftpy2.thrift import TType

__all__ = ["WireError", "check_call"]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FIXED_WIDTH = {TType.BOOL: 1, TType.BYTE: 1, TType.I16: 2, TType.I32: 4, TType.I64: 8, TType.DOUBLE: 8}
# The compiled decoder reads 11 and 18 as a length-prefixed byte string.
_STRINGS = frozenset({TType.STRING, TType.BINARY})
_CONTAINERS = frozenset({TType.LIST, TType.SET, TType.MAP})
_VALID = frozenset({*_FIXED_WIDTH, *_STRINGS, *_CONTAINERS, TType.STRUCT})
# Below this many elements a list of strings is walked in Python; NumPy's fixed cost is higher.
_VECTOR_MIN_ELEMENTS = 256


class WireError(Exception):
    """The body is not a well-formed call; ``field`` names the IDL field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def _type_name(wire_type: int) -> str:
    return TType._VALUES_TO_NAMES.get(wire_type, f"invalid type {wire_type}").lower()


def _same_type(received: int, declared: int) -> bool:
    return received == declared or (received in _STRINGS and declared in _STRINGS)


class _Walker:
    """Walks values without decoding them.

    Reads past the end of the body raise ``IndexError`` or ``struct.error``, which
    ``check_call`` turns into one ``WireError``; a position moved past the end by a skip is
    caught by the next read or by the final length check.
    """

    def __init__(self, body: bytes, max_depth: int):
        self.body = body
        self.end = len(body)
        self.max_depth = max_depth

    def skip_value(self, position: int, wire_type: int, depth: int, field: str | None = None) -> int:
        """Return the position after one value of ``wire_type``; nothing is decoded."""
        width = _FIXED_WIDTH.get(wire_type)
        if width is not None:
            return position + width
        body = self.body
        if wire_type in _STRINGS:
            length = _I32.unpack_from(body, position)[0]
            if length < 0:
                raise WireError(f"{field or 'a string'} has a negative length ({length})", field=field)
            return position + 4 + length
        if depth >= self.max_depth:
            raise WireError(f"nesting deeper than {self.max_depth} levels at byte {position}")
        if wire_type == TType.STRUCT:
            return self.walk_struct(position, None, depth + 1, "")
        if wire_type in (TType.LIST, TType.SET):
            element_type = body[position]
            return self.skip_elements(position + 5, (element_type,), _I32.unpack_from(body, position + 1)[0], depth + 1, field)
        if wire_type == TType.MAP:
            types = (body[position], body[position + 1])
            return self.skip_elements(position + 6, types, _I32.unpack_from(body, position + 2)[0], depth + 1, field)
        raise WireError(f"{field or 'a value'} at byte {position} has {_type_name(wire_type)}", field=field)

    def skip_elements(self, position: int, types: tuple[int, ...], size: int, depth: int, field: str | None) -> int:
        if size < 0:
            raise WireError(f"{field or 'a container'} has a negative length ({size})", field=field)
        if size == 0:
            return position
        for element_type in types:
            if element_type not in _VALID:
                raise WireError(f"{field or 'a container'} at byte {position} contains elements of {_type_name(element_type)}", field=field)
        widths = [_FIXED_WIDTH.get(t) for t in types]
        if None not in widths:
            return position + size * sum(widths)
        # Every element takes at least one byte, so a larger count cannot fit in the body.
        if size > self.end - position:
            raise WireError(f"{field or 'a container'} declares {size} elements; only {self.end - position} bytes follow", field=field)
        if len(types) == 1 and types[0] in _STRINGS:
            return self.skip_string_list(position, size, field)
        for _ in range(size):
            for element_type in types:
                position = self.skip_value(position, element_type, depth, field)
        return position

    def skip_string_list(self, position: int, size: int, field: str | None) -> int:
        if size >= _VECTOR_MIN_ELEMENTS:
            end = self._string_list_end(position, size)
            if end is not None:
                return end
        body, unpack = self.body, _I32.unpack_from
        for _ in range(size):
            length = unpack(body, position)[0]
            if length < 0:
                raise WireError(f"{field or 'a string'} has a negative length ({length})", field=field)
            position += 4 + length
        return position

    def _string_list_end(self, position: int, size: int) -> int | None:
        """Return the end of ``size`` strings of 1-255 NUL-free bytes at ``position``, or None.

        In such a list the only zero bytes are the first three of each 4-byte length prefix, so
        the first ``3 * size`` zeros locate every element. None means the shortcut does not
        apply and the list has to be walked element by element.
        """
        data = np.frombuffer(self.body, dtype=np.uint8, offset=position)
        zeros = np.flatnonzero(data == 0)
        if len(zeros) < 3 * size:
            return None
        triples = zeros[: 3 * size].reshape(size, 3)
        starts = triples[:, 0]
        if starts[0] != 0 or starts[-1] + 4 > len(data):
            return None
        # Each length prefix is three zero bytes and a non-zero length byte, and the next
        # element starts right after the bytes that length announces.
        lengths = data[starts + 3].astype(np.int64)
        next_starts = starts + 4 + lengths
        if not ((triples[:, 1] - starts == 1) & (triples[:, 2] - starts == 2) & (lengths > 0)).all():
            return None
        if not (starts[1:] == next_starts[:-1]).all():
            return None
        end = int(next_starts[-1])
        if end > len(data):
            return None
        return position + end

    def walk_struct(self, position: int, spec: dict[int, tuple] | None, depth: int, prefix: str) -> int:
        """Walk struct fields up to STOP, checking known fields against ``spec``."""
        body = self.body
        while True:
            wire_type = body[position]
            if wire_type == TType.STOP:
                return position + 1
            field_id = _I16.unpack_from(body, position + 1)[0]
            position += 3
            declared = spec.get(field_id) if spec is not None else None
            if declared is None:
                position = self.skip_value(position, wire_type, depth)
                continue
            declared_type = declared[0]
            name = prefix + declared[1]
            if wire_type != declared_type and not (wire_type in _STRINGS and declared_type in _STRINGS):
                raise WireError(f"{name} has wire type {_type_name(wire_type)}; the contract declares {_type_name(declared_type)}", field=name)
            if declared_type == TType.STRUCT:
                if depth >= self.max_depth:
                    raise WireError(f"nesting deeper than {self.max_depth} levels at byte {position}")
                # Fields of a method's argument struct are named the way a caller knows them
                # (``glance_ids``, not ``request.glance_ids``).
                position = self.walk_struct(position, declared[2].thrift_spec, depth + 1, "")
            elif declared_type in (TType.LIST, TType.SET):
                element_type = body[position]
                size = _I32.unpack_from(body, position + 1)[0]
                expected = declared[2] if isinstance(declared[2], int) else declared[2][0]
                if size > 0 and element_type != expected and not (element_type in _STRINGS and expected in _STRINGS):
                    raise WireError(
                        f"{name} is a list of {_type_name(element_type)}; the contract declares list<{_type_name(expected)}>", field=name
                    )
                position = self.skip_elements(position + 5, (element_type,), size, depth + 1, name)
            else:
                position = self.skip_value(position, wire_type, depth, name)


def check_call(body: bytes, message_start: int, args_class: Any, *, max_depth: int) -> None:
    """Raise ``WireError`` unless the argument struct at ``message_start`` is well formed and ends the body."""
    walker = _Walker(body, max_depth)
    try:
        end = walker.walk_struct(message_start, args_class.thrift_spec, 1, "")
    except (IndexError, struct.error):
        raise WireError(f"body of {len(body)} bytes ends inside a value") from None
    if end > len(body):
        raise WireError(f"body of {len(body)} bytes ends {end - len(body)} bytes before the last value does")
    if end < len(body):
        raise WireError(f"{len(body) - end} bytes follow the end of the message")
