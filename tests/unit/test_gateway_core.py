import pytest

from services.common.errors import InvalidInput, TooLarge
from services.gateway.core import assemble_instances


def test_chunks_are_joined_per_instance_in_order() -> None:
    chunks = [(0, b"ab"), (0, b"c"), (1, b"de"), (2, b""), (2, b"f")]
    assert assemble_instances(chunks, 10, 100) == [b"abc", b"de", b"f"]


def test_out_of_order_chunks_are_invalid() -> None:
    with pytest.raises(InvalidInput, match="out of order"):
        assemble_instances([(0, b"a"), (2, b"b")], 10, 100)
    with pytest.raises(InvalidInput, match="out of order"):
        assemble_instances([(0, b"a"), (1, b"b"), (0, b"c")], 10, 100)


def test_limits_are_enforced_while_receiving() -> None:
    def endless():
        index = 0
        while True:
            yield index, b"x" * 10
            index += 1

    with pytest.raises(TooLarge, match="more than 3 instances"):
        assemble_instances(endless(), 3, 10**6)
    with pytest.raises(TooLarge, match="exceeds the limit of 25 bytes"):
        assemble_instances(((0, b"x" * 10) for _ in range(100)), 3, 25)
