"""The one seam where domain errors become gRPC statuses, plus per-RPC logs and metrics.

Like pynetdicom's handlers, servicers never leak exceptions to the wire: a PlatformError
becomes its status code with its human-readable reason (platform faults: only the request id)
and a ``google.rpc.ErrorInfo`` naming its kind, so a calling service can re-raise the same
class; anything else is logged with a traceback and returned as INTERNAL with the request id,
so the service keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import logs
from services.common.admission import Limiter
from services.common.errors import (
    DOMAIN,
    InternalError,
    PermissionDenied,
    PlatformError,
    public_reason,
)
from services.common.metrics import RPC_LATENCY, RPC_TOTAL

REQUEST_ID_HEADER = "x-request-id"
_log = logging.getLogger("imaging.rpc")


class _Rpc:
    """Timing, metrics and the one log line of an RPC; shared by the two seams below."""

    def __init__(self, service: str, method: str, rid: str) -> None:
        self._service, self._method = service, method
        self._token = logs.request_id.set(rid)
        self._start = time.perf_counter()

    def failure(self, err: Exception) -> PlatformError:
        """``err`` as the platform error to answer with (call inside ``except``)."""
        if isinstance(err, PlatformError):
            return err
        _log.exception("unhandled error in %s", self._method)
        return InternalError("unhandled exception (traceback above)")

    def finish(self, failure: PlatformError | None, cancelled: bool = False) -> str:
        """Record the outcome; the request id in use (the servicer may adopt the caller's)."""
        current = logs.request_id.get()
        code, reason = grpc.StatusCode.OK, ""
        if cancelled:
            code = grpc.StatusCode.CANCELLED
        elif failure is not None:
            code, reason = grpc.StatusCode[failure.code.name], f"{failure.kind}: {failure.reason}"
        elapsed = time.perf_counter() - self._start
        RPC_LATENCY.labels(self._service, self._method).observe(elapsed)
        RPC_TOTAL.labels(self._service, self._method, code.name).inc()
        _log.log(
            logging.INFO if failure is None or failure.public else logging.ERROR,
            "%s %s %.1f ms%s",
            self._method,
            code.name,
            elapsed * 1e3,
            f" {reason}" if reason else "",
        )
        logs.request_id.reset(self._token)
        return current


_HEALTH = "/grpc.health.v1.Health/"


def peer_identities(context: grpc.ServicerContext) -> set[str]:
    """The CN and subject alternative names of the certificate the TLS handshake verified."""
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return {n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names}


def request_id(details: grpc.HandlerCallDetails) -> str:
    """The caller's x-request-id when it is a safe one, else a new id."""
    metadata = dict(details.invocation_metadata or ())
    given = str(metadata.get(REQUEST_ID_HEADER) or "")
    return given if logs.is_safe_request_id(given) else uuid.uuid4().hex


def rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """The same unary-response handler with its behaviour wrapped (every interceptor here
    wraps unary-unary and stream-unary handlers alike)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        wrap(handler.stream_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps unary-response handlers of one service; streaming responses pass through. The
    service's own methods run within ``limiter`` (health and reflection never wait)."""

    def __init__(
        self,
        service: str,
        limiter: Limiter | None = None,
        allowed_peers: frozenset[str] = frozenset(),
    ) -> None:
        self._service, self._limiter, self._allowed = service, limiter, allowed_peers

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.response_streaming:
            return handler  # reflection and health Watch: not ours to wrap
        method, rid = details.method.rsplit("/", 1)[-1], request_id(details)
        limiter = None if details.method.startswith("/grpc.") else self._limiter
        allowed = None if details.method.startswith(_HEALTH) else self._allowed

        def wrap(
            behavior: Callable[[Any, grpc.ServicerContext], Any],
        ) -> Callable[[Any, grpc.ServicerContext], Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                rpc = _Rpc(self._service, method, rid)
                try:
                    if allowed and not peer_identities(context) & allowed:
                        raise PermissionDenied(
                            "this service answers the platform's own services only "
                            "(the caller's certificate names none of IMAGING_ALLOWED_PEERS)"
                        )
                    with limiter.slot() if limiter is not None else nullcontext():
                        response = behavior(request, context)
                except Exception as err:
                    failure = rpc.failure(err)
                else:
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, logs.request_id.get()),))
                    rpc.finish(None)
                    return response
                context.abort_with_status(status(failure, rpc.finish(failure)))

            return wrapped

        return rewrap(handler, wrap)


class AsyncServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The same seam for an asyncio server (the gateway). A call the client cancels or lets
    expire cancels the handler's task, and with it every inner call it awaits."""

    def __init__(self, service: str, allowed_peers: frozenset[str] = frozenset()) -> None:
        self._service = service
        self._allowed = allowed_peers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.response_streaming:
            return handler
        method, rid = details.method.rsplit("/", 1)[-1], request_id(details)
        allowed = None if details.method.startswith(_HEALTH) else self._allowed

        def wrap(
            behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                rpc = _Rpc(self._service, method, rid)
                try:
                    if allowed and not peer_identities(context) & allowed:
                        raise PermissionDenied(
                            "the caller's certificate names none of IMAGING_ALLOWED_PEERS"
                        )
                    response = await behavior(request, context)
                except asyncio.CancelledError:
                    rpc.finish(None, cancelled=True)
                    raise
                except Exception as err:
                    failure = rpc.failure(err)
                else:
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, logs.request_id.get()),))
                    rpc.finish(None)
                    return response
                wire = status(failure, rpc.finish(failure))
                await context.abort(wire.code, wire.details, wire.trailing_metadata)

            return wrapped

        return rewrap(handler, wrap)


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
