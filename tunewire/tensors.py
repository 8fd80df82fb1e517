"""Tensor codec: numpy arrays <-> `tunewire.v1.Tensor` (raw little-endian bytes + dtype + shape).

Conversion happens at the service boundary only; inside, code works with numpy/torch.
"""

from __future__ import annotations

import numpy as np

from tunewire.errors import InvalidArgument
from tunewire.v1 import tensor_pb2

_TO_NUMPY = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}

DTYPE_NAMES = {"float32": tensor_pb2.DTYPE_FLOAT32, "float16": tensor_pb2.DTYPE_FLOAT16}


def numpy_dtype(dtype: int) -> np.dtype:
    if dtype not in _TO_NUMPY:
        raise InvalidArgument(
            f"unsupported tensor dtype {tensor_pb2.DType.Name(dtype)}", field="dtype"
        )
    return _TO_NUMPY[dtype]


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    array = np.ascontiguousarray(array)
    le = array.dtype.newbyteorder("<") if array.dtype.byteorder not in ("<", "|") else array.dtype
    array = array.astype(le, copy=False)
    dtype = _FROM_NUMPY.get(np.dtype(array.dtype.str))
    if dtype is None:
        raise InvalidArgument(f"cannot encode numpy dtype {array.dtype}", field="dtype")
    return tensor_pb2.Tensor(dtype=dtype, shape=list(array.shape), data=array.tobytes())


def from_proto(tensor: tensor_pb2.Tensor) -> np.ndarray:
    return from_data(tensor, tensor.data)


def from_data(tensor: tensor_pb2.Tensor, data: bytes | memoryview) -> np.ndarray:
    """The array of `tensor`'s dtype and shape over `data` (no copy), which a caller may hold
    apart from the message (tunewire.clients.embed_wire leaves it in the received buffer)."""
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(int(s) for s in tensor.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"tensor data has {len(data)} bytes, shape {list(shape)} of {dtype} needs {expected}",
            field="data",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
