"""Errors of inner calls without platform details become the platform's by their code."""

from __future__ import annotations

import grpc
import pytest

from services.common import errors
from services.common.remote_errors import from_rpc_error


class _Failed(grpc.RpcError):
    """A failed call as grpc hands it over (code and details; no trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, errors.DependencyUnavailable),
        # A stopping peer cancels calls it received but had not started: not a platform fault.
        (grpc.StatusCode.CANCELLED, errors.DependencyUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.UNKNOWN, errors.InternalError),
    ],
)
def test_transport_failures_by_code(code: grpc.StatusCode, expected: type) -> None:
    err = from_rpc_error("preprocessor", _Failed(code, "ipv4:10.0.0.7:50053 said no"))
    assert type(err) is expected
    if expected is errors.DependencyUnavailable:
        assert "10.0.0.7" not in err.reason  # addresses stay in the operator's log
