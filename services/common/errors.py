"""One exception tree for the whole platform.

Domain code raises these; the error interceptor is the only place that turns them into gRPC
status codes, so servicers never call ``context.abort`` themselves. Messages are shown to
clients: they must explain the problem to a person and must never contain patient data.
"""

from __future__ import annotations

import grpc


class PlatformError(Exception):
    """Base of every error the platform reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(PlatformError):
    """The request itself is wrong: not DICOM, no pixels, bad shape, empty."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnsupportedInput(InvalidInput):
    """Well-formed input the platform cannot handle (e.g. an unknown transfer syntax)."""


class TooLarge(PlatformError):
    """Input exceeds a configured limit (image size, study size, message size)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(PlatformError):
    """A named pipeline or model does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class NoMatchingPipeline(PlatformError):
    """No pipeline accepts the study; the reason lists what each pipeline wanted."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DependencyUnavailable(PlatformError):
    """A downstream service (Triton, another platform service) cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PlatformError):
    """A downstream call ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(PlatformError):
    """A bug or an unexpected downstream answer; details go to the log, not the client."""

    code = grpc.StatusCode.INTERNAL
