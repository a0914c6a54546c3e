"""The one seam where domain errors become gRPC statuses, plus per-RPC logs and metrics.

Like pynetdicom's handlers, servicers never leak exceptions to the wire: a PlatformError
becomes its status code with its human-readable reason (platform faults: only the request id)
and a ``google.rpc.ErrorInfo`` naming its kind, so a calling service can re-raise the same
class; anything else is logged with a traceback and returned as INTERNAL with the request id,
so the service keeps serving.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import logs
from services.common.errors import DOMAIN, InternalError, PlatformError, public_reason
from services.common.metrics import RPC_LATENCY, RPC_TOTAL

REQUEST_ID_HEADER = "x-request-id"
_log = logging.getLogger("imaging.rpc")


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps unary-response handlers of one service; streaming responses pass through."""

    def __init__(self, service: str) -> None:
        self._service = service

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.response_streaming:
            return handler  # reflection and health Watch: not ours to wrap
        method = details.method.rsplit("/", 1)[-1]
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get(REQUEST_ID_HEADER) or "")
        rid = given if logs.is_safe_request_id(given) else uuid.uuid4().hex
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary, method, rid),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            self._wrap(handler.stream_unary, method, rid),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, rid: str
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            token = logs.request_id.set(rid)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            reason = ""
            failure: PlatformError | None = None
            try:
                response = behavior(request, context)
                context.set_trailing_metadata(((REQUEST_ID_HEADER, logs.request_id.get()),))
                return response
            except PlatformError as err:
                failure = err
            except Exception:
                _log.exception("unhandled error in %s", method)
                failure = InternalError("unhandled exception (traceback above)")
            finally:
                current = logs.request_id.get()  # the servicer may adopt the caller's own id
                if failure is not None:
                    code, reason = failure.code, f"{failure.kind}: {failure.reason}"
                elapsed = time.perf_counter() - start
                RPC_LATENCY.labels(self._service, method).observe(elapsed)
                RPC_TOTAL.labels(self._service, method, code.name).inc()
                _log.log(
                    logging.INFO if failure is None or failure.public else logging.ERROR,
                    "%s %s %.1f ms%s",
                    method,
                    code.name,
                    elapsed * 1e3,
                    f" {reason}" if reason else "",
                )
                logs.request_id.reset(token)
            assert failure is not None
            context.abort_with_status(status(failure, current))

        return wrapped


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def status(err: PlatformError, request_id: str) -> _Status:
    """The wire form of ``err``: its code, what the caller may read, its kind and the request
    id (trailing metadata, as on successful calls)."""
    info = error_details_pb2.ErrorInfo(
        reason=err.kind, domain=DOMAIN, metadata={"request_id": request_id}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    message = status_pb2.Status(
        code=getattr(code_pb2, err.code.name),
        message=public_reason(err, request_id),
        details=[detail],
    )
    wire = rpc_status.to_status(message)
    return _Status(
        wire.code, wire.details, (*wire.trailing_metadata, (REQUEST_ID_HEADER, request_id))
    )
