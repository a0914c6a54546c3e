"""NumPy arrays <-> imaging.v1.Tensor: raw little-endian bytes, shape and dtype."""

from __future__ import annotations

import numpy as np

from services.api.imaging.v1 import tensor_pb2
from services.common.errors import InvalidInput, TooLarge

_TO_NUMPY: dict[tensor_pb2.DType, np.dtype] = {
    tensor_pb2.DTYPE_UINT8: np.dtype("<u1"),
    tensor_pb2.DTYPE_INT8: np.dtype("<i1"),
    tensor_pb2.DTYPE_UINT16: np.dtype("<u2"),
    tensor_pb2.DTYPE_INT16: np.dtype("<i2"),
    tensor_pb2.DTYPE_UINT32: np.dtype("<u4"),
    tensor_pb2.DTYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
}
_FROM_NUMPY: dict[str, tensor_pb2.DType] = {dt.str[1:]: code for code, dt in _TO_NUMPY.items()}


def dtype_to_proto(dtype: np.dtype) -> tensor_pb2.DType:
    code = _FROM_NUMPY.get(dtype.str[1:])
    if code is None:
        raise InvalidInput(f"arrays of dtype {dtype} cannot be sent as tensors")
    return code


def dtype_from_proto(code: tensor_pb2.DType) -> np.dtype:
    dtype = _TO_NUMPY.get(code)
    if dtype is None:
        raise InvalidInput(f"tensor dtype {code} is not supported")
    return dtype


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """Serialise any supported array; big-endian input is byte-swapped to little-endian."""
    code = dtype_to_proto(array.dtype)
    little = np.ascontiguousarray(array, dtype=_TO_NUMPY[code])
    return tensor_pb2.Tensor(dtype=code, shape=list(little.shape), data=little.tobytes())


def from_proto(tensor: tensor_pb2.Tensor, max_elements: int | None = None) -> np.ndarray:
    """Deserialise without copying; validates that shape, dtype and byte count agree."""
    dtype = dtype_from_proto(tensor.dtype)
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise InvalidInput(f"tensor shape {shape} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if max_elements is not None and count > max_elements:
        raise TooLarge(f"tensor of {count} elements exceeds the limit of {max_elements}")
    if count * dtype.itemsize != len(tensor.data):
        raise InvalidInput(
            f"tensor of shape {shape} and dtype {dtype.name} needs {count * dtype.itemsize} "
            f"bytes but carries {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
