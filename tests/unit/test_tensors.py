import numpy as np
import pytest

from services.api.imaging.v1 import tensor_pb2
from services.common import tensors
from services.common.errors import InvalidInput, TooLarge


@pytest.mark.parametrize("dtype", ["u1", "i1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8"])
def test_round_trip_keeps_values_shape_and_dtype(dtype: str) -> None:
    array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    back = tensors.from_proto(tensors.to_proto(array))
    assert back.dtype == np.dtype(dtype)
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_is_sent_little_endian() -> None:
    array = np.array([1, 256, -2], dtype=">i2")
    message = tensors.to_proto(array)
    assert message.data == np.array([1, 256, -2], dtype="<i2").tobytes()
    np.testing.assert_array_equal(tensors.from_proto(message), array)


def test_byte_count_mismatch_is_invalid() -> None:
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2, 2], data=b"\0" * 12)
    with pytest.raises(InvalidInput, match="needs 16 bytes but carries 12"):
        tensors.from_proto(message)


def test_unknown_dtype_and_too_many_elements_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="dtype"):
        tensors.from_proto(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UNSPECIFIED, shape=[1]))
    with pytest.raises(TooLarge, match="exceeds the limit"):
        tensors.from_proto(tensors.to_proto(np.zeros(10, np.uint8)), max_elements=5)
    with pytest.raises(InvalidInput, match="cannot be sent"):
        tensors.to_proto(np.zeros(2, dtype=np.complex64))
