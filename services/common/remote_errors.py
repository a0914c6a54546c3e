"""The one seam where errors of remote calls become the platform's exceptions.

An inner service's error carries a ``google.rpc.ErrorInfo`` with the kind of the exception it
raised (services/common/interceptor.py); it is re-raised as that class with its reason, by code
and kind, never by matching message text. Triton's errors carry a gRPC status code, read here
exactly, and become UNAVAILABLE (not reachable, model not loaded), DEADLINE_EXCEEDED, or a
platform fault (the model refused what the pipeline sent: a deployment inconsistency).
"""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tritonclient.utils import InferenceServerException

from services.common import errors

log = logging.getLogger(__name__)


def error_kind(err: grpc.RpcError) -> str:
    """The ErrorInfo kind of a platform service's error, "" when it carries none."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details inconsistent with the status: not one of ours
        return ""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == errors.DOMAIN:
            return str(info.reason)
    return ""


def from_rpc_error(peer: str, err: grpc.RpcError) -> errors.PlatformError:
    """An inner service's failure as the exception it raised; transport failures by code."""
    code, details = err.code(), err.details() or ""
    cls = errors.from_kind(error_kind(err), code.name)
    if cls is not None:
        if not cls.public:  # the peer's reason is only a pointer to its own log
            return cls(f"{peer} failed: {details}")
        return cls(details)
    # Transport failures: gRPC's text names addresses and sockets, for the operator's log only.
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        # CANCELLED without platform details: the peer cancelled it (shutting down), not us.
        log.warning("%s is unavailable (%s): %s", peer, code.name, details)
        return errors.DependencyUnavailable(f"the {peer} service is unavailable; try again later")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"the {peer} service did not answer in time")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own message-size limit
        return errors.TooLarge(f"{peer} refused the message: {details}")
    return errors.InternalError(f"{peer} failed ({code.name}) without platform details: {details}")


def triton_code(err: InferenceServerException) -> grpc.StatusCode | None:
    """The gRPC status code of a tritonclient error ("StatusCode.NOT_FOUND"), None if none."""
    name = str(err.status() or "").removeprefix("StatusCode.")
    return grpc.StatusCode.__members__.get(name)


def from_triton_error(
    address: str, model: str, err: InferenceServerException
) -> errors.PlatformError:
    """Triton's failure for one model call."""
    code, message = triton_code(err), err.message() or str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        log.warning("inference server at %s is unavailable: %s", address, message)
        return errors.DependencyUnavailable(
            f"the inference server is unavailable for model {model}; try again later"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"model {model} did not answer in time")
    if code == grpc.StatusCode.NOT_FOUND:
        log.warning("model %s is not loaded on %s: %s", model, address, message)
        return errors.DependencyUnavailable(f"model {model} is not loaded on the inference server")
    return errors.Misconfiguration(f"model {model} refused the request ({code}): {message}")
