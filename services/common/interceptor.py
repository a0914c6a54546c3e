"""The one seam where domain errors become gRPC statuses, plus per-RPC logs and metrics.

Like pynetdicom's handlers, servicers never leak exceptions to the wire: a PlatformError
becomes its status code with its human-readable reason; anything else is logged with a
traceback and returned as INTERNAL with the request id, so the service keeps serving.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from services.common import logs
from services.common.errors import PlatformError
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
        rid = str(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)
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
            try:
                context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
                return behavior(request, context)
            except PlatformError as err:
                code, reason = err.code, err.reason
            except Exception:
                _log.exception("unhandled error in %s", method)
                code = grpc.StatusCode.INTERNAL
                reason = f"internal error; quote request id {rid} to the operator"
            finally:
                elapsed = time.perf_counter() - start
                RPC_LATENCY.labels(self._service, method).observe(elapsed)
                RPC_TOTAL.labels(self._service, method, code.name).inc()
                _log.info(
                    "%s %s %.1f ms%s",
                    method,
                    code.name,
                    elapsed * 1e3,
                    f" {reason}" if reason else "",
                )
                logs.request_id.reset(token)
            context.abort(code, reason)

        return wrapped
