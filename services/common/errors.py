"""One exception tree for the whole platform.

Domain code raises these; the error interceptor is the only place that turns them into gRPC
statuses, so servicers never call ``context.abort`` themselves.

Two families:

- **Caller faults** (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, RESOURCE_EXHAUSTED) and
  **unavailable dependencies** (UNAVAILABLE, DEADLINE_EXCEEDED): the reason is shown to the
  caller, so it must explain the problem to a person and must never contain patient data.
- **Platform faults** (:class:`InternalError` and its subclasses, INTERNAL): a model output
  that breaks its pipeline's contract, a pipeline or deployment misconfiguration, a bug. The
  caller gets the request id; the reason goes to the log only.

Every class has a stable ``kind``, sent between the services as the ``reason`` of a
``google.rpc.ErrorInfo`` detail, so that the gateway re-raises the inner service's class by
code and kind (:func:`from_kind`), never by matching message text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

DOMAIN = "imaging.v1"


class Status(StrEnum):
    """The gRPC status codes the platform answers with, by their canonical names (google.rpc.Code):
    an error's contract. Only the RPC plumbing (interceptor, remote_errors) turns one into a
    grpc.StatusCode, so code that raises or inspects errors needs no gRPC."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class PlatformError(Exception):
    """Base of every error the platform reports to a caller."""

    code: ClassVar[Status] = Status.INTERNAL
    kind: ClassVar[str] = "PLATFORM_ERROR"
    # False: the reason is for the operator's log; the caller gets a request id.
    public: ClassVar[bool] = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- caller faults -------------------------------------------------------------------------


class InvalidInput(PlatformError):
    """The request itself is wrong: not DICOM, no pixels, bad shape, empty."""

    code = Status.INVALID_ARGUMENT
    kind = "INVALID_INPUT"


class UnsupportedInput(InvalidInput):
    """Well-formed input the platform cannot handle (e.g. an unknown transfer syntax)."""

    kind = "UNSUPPORTED_INPUT"


class TooLarge(PlatformError):
    """Input exceeds a configured limit (image size, study size, message size)."""

    code = Status.RESOURCE_EXHAUSTED
    kind = "TOO_LARGE"


class Overloaded(PlatformError):
    """The service is at capacity: every slot busy and the queue full; retry later."""

    code = Status.RESOURCE_EXHAUSTED
    kind = "OVERLOADED"


class Unauthenticated(PlatformError):
    """No credentials, or credentials the gateway does not know."""

    code = Status.UNAUTHENTICATED
    kind = "UNAUTHENTICATED"


class PermissionDenied(PlatformError):
    """A known caller asked for something its policy does not allow."""

    code = Status.PERMISSION_DENIED
    kind = "PERMISSION_DENIED"


class RateLimited(PlatformError):
    """The caller's rate limit is used up; retry later."""

    code = Status.RESOURCE_EXHAUSTED
    kind = "RATE_LIMITED"


class NotFound(PlatformError):
    """A named pipeline does not exist."""

    code = Status.NOT_FOUND
    kind = "NOT_FOUND"


class StudyRefused(PlatformError):
    """A valid study the chosen pipeline will not analyse (the reason says why)."""

    code = Status.FAILED_PRECONDITION
    kind = "STUDY_REFUSED"


class NoMatchingPipeline(StudyRefused):
    """No pipeline accepts the study; the reason lists what each pipeline wanted."""

    kind = "NO_MATCHING_PIPELINE"


class OutsideIntendedUse(StudyRefused):
    """The study is outside the pipeline's declared intended use and the pipeline refuses such
    studies (rather than flagging their findings); the reason says which constraint."""

    kind = "OUTSIDE_INTENDED_USE"


# --- dependencies --------------------------------------------------------------------------


class DependencyUnavailable(PlatformError):
    """A downstream service (Triton, another platform service) cannot be reached."""

    code = Status.UNAVAILABLE
    kind = "DEPENDENCY_UNAVAILABLE"


class DeadlineExceeded(PlatformError):
    """A downstream call ran out of time."""

    code = Status.DEADLINE_EXCEEDED
    kind = "DEADLINE_EXCEEDED"


# --- platform faults: reason logged, never returned -----------------------------------------


class InternalError(PlatformError):
    """A bug or an unexpected downstream answer."""

    code = Status.INTERNAL
    kind = "INTERNAL"
    public = False


class ContractViolation(InternalError):
    """A model's outputs do not have what its pipeline's rules read (names, shapes, columns)."""

    kind = "CONTRACT_VIOLATION"


class Misconfiguration(InternalError):
    """The deployment is inconsistent: e.g. a pipeline names an input the model lacks."""

    kind = "MISCONFIGURATION"


def _classes(root: type[PlatformError]) -> list[type[PlatformError]]:
    return [root, *(c for sub in root.__subclasses__() for c in _classes(sub))]


def all_classes() -> list[type[PlatformError]]:
    """Every error class, the root first."""
    return _classes(PlatformError)


def from_kind(kind: str, code: str) -> type[PlatformError] | None:
    """The class an inner service raised, if ``kind`` names one with this status code (its
    canonical name, as the wire's grpc.StatusCode.name)."""
    for cls in all_classes():
        if cls.kind == kind and cls.code == code:
            return cls
    return None


def quote_prefix(value: str, limit: int = 32) -> str:
    """``value`` quoted for a reason or a log line, at most its first ``limit`` characters.

    A caller's string (a pipeline name, say) may be megabytes long or hold newlines: it is
    repr()'d, so control characters show escaped, and cut, saying how long it was, so it can
    neither grow a status nor forge or flood a log line."""
    shown = value[:limit]
    while len(repr(shown)) > 2 * limit + 2:  # escapes (\x00, \U0001f600) lengthen a repr
        shown = shown[:-1]
    if len(shown) == len(value):
        return repr(shown)
    return f"{shown!r}... ({len(value)} characters)"


def public_reason(err: PlatformError, request_id: str) -> str:
    """What the caller may read: the reason, or for platform faults only where to look."""
    if err.public:
        return err.reason
    return f"internal error ({err.kind}); quote request id {request_id} to the operator"
