"""Conversion between float32 NumPy arrays and TensorFlow ``TensorProto`` messages for gRPC calls.

``tensor_content`` carries the raw little-endian bytes. TensorFlow Serving returns Predict
outputs in that form, and it is the cheapest form to build. ``float_val`` is read as well,
because a client may send it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TensorProtoError", "float_tensor_proto", "float_array_from_proto"]


class TensorProtoError(ValueError):
    """A TensorProto is not a float32 tensor, or its values do not fill its shape."""


def float_tensor_proto(array: np.ndarray) -> object:
    """Return a ``TensorProto`` of dtype DT_FLOAT holding ``array``."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    values = np.ascontiguousarray(array, dtype="<f4")
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in values.shape])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=values.tobytes())


def float_array_from_proto(proto: object, *, name: str = "tensor") -> np.ndarray:
    """Return the float32 array of a DT_FLOAT ``TensorProto``; raise ``TensorProtoError`` otherwise."""
    from tensorflow.core.framework import types_pb2

    if proto.dtype != types_pb2.DT_FLOAT:
        raise TensorProtoError(f"{name} has dtype {types_pb2.DataType.Name(proto.dtype)}; expected DT_FLOAT")
    shape = tuple(int(dim.size) for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorProtoError(f"{name} has an unknown dimension in shape {shape}")
    count = int(np.prod(shape)) if shape else 1
    if proto.tensor_content:
        if len(proto.tensor_content) != 4 * count:
            raise TensorProtoError(f"{name} has {len(proto.tensor_content)} bytes for shape {shape}; expected {4 * count}")
        return np.frombuffer(proto.tensor_content, dtype="<f4").reshape(shape).astype(np.float32)
    values = np.asarray(proto.float_val, dtype=np.float32)
    if len(values) == count:
        return values.reshape(shape)
    if len(values) == 1 and count > 0:
        # TensorFlow's rule: a single value fills the whole shape.
        return np.full(shape, values[0], dtype=np.float32)
    raise TensorProtoError(f"{name} has {len(values)} float_val entries for shape {shape}; expected {count}")
