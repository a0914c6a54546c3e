"""One audit record per Gateway call, refused calls included (services/common/audit.py).

The interceptor runs just inside the error seam: it sees the outcome of every call, the
authentication refusals included. What only the analysis learns (the study, the model version
Triton reports it served, the findings) is noted on a per-call record through a context
variable, so neither the core nor the clients pass audit data around.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.api.imaging.v1 import gateway_pb2
from services.common import logs
from services.common.audit import AuditEvent, AuditFinding, AuditLog
from services.common.errors import PlatformError
from services.common.interceptor import rewrap
from services.gateway.auth import caller

_GATEWAY = "/imaging.v1.Gateway/"


@dataclass
class CallFacts:
    pipeline: str = ""
    model_name: str = ""
    model_version: str = ""
    study_uid: str = ""
    instance_sha256: list[str] = field(default_factory=list)
    # A stream's running digests, made hex once at the end of the call.
    digests: list[Any] = field(default_factory=list)
    findings: list[AuditFinding] = field(default_factory=list)
    # The caller named the pipeline; keywords of the routing tags that naming overrode.
    pipeline_named: bool = False
    routing_overridden: list[str] = field(default_factory=list)
    # The origin a trusted relay asserted for the study, once accepted (services/gateway/policy.py).
    origin_ae: str = ""
    origin_address: str = ""


_current: ContextVar[CallFacts | None] = ContextVar("audit_facts", default=None)


def note(**facts: Any) -> None:
    """Record facts about the call being served (no-op without an audit trail)."""
    current = _current.get()
    if current is not None:
        for name, value in facts.items():
            setattr(current, name, value)


async def _hashing(
    messages: AsyncIterator[gateway_pb2.AnalyzeChunk], facts: CallFacts
) -> AsyncIterator[gateway_pb2.AnalyzeChunk]:
    """Pass a stream's messages on, hashing each instance's bytes as they arrive.

    Only the chunks InstanceAssembler accepts are hashed (the current instance or the next
    one); any other index is the assembler's to refuse, so a caller's index never sizes
    anything here (index 6,000,000 once padded 6 million digests on the event loop)."""
    digests = facts.digests
    async for message in messages:
        if message.WhichOneof("part") == "chunk":
            index = message.chunk.instance_index
            if index == len(digests):
                digests.append(hashlib.sha256())
            if index == len(digests) - 1:
                digests[index].update(message.chunk.data)
        yield message


class AuditInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.response_streaming or not details.method.startswith(_GATEWAY):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        audit = self._log

        streamed = handler.unary_unary is None

        def wrap(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                facts = CallFacts()
                token = _current.set(facts)
                start, status = time.perf_counter(), "OK"
                if streamed:
                    request = _hashing(request, facts)
                elif isinstance(request, gateway_pb2.AnalyzeRequest):
                    facts.instance_sha256 = [
                        hashlib.sha256(i).hexdigest() for i in request.instances
                    ]
                try:
                    return await behavior(request, context)
                except PlatformError as err:
                    status = err.code.name
                    raise
                except asyncio.CancelledError:
                    status = "CANCELLED"
                    raise
                except Exception:
                    status = "INTERNAL"
                    raise
                finally:
                    if facts.digests:
                        facts.instance_sha256 = [d.hexdigest() for d in facts.digests]
                    audit.record(
                        AuditEvent(
                            request_id=logs.request_id.get(),
                            client=caller.get(),
                            peer=context.peer() or "",
                            method=method,
                            pipeline=facts.pipeline,
                            model_name=facts.model_name,
                            model_version=facts.model_version,
                            instance_sha256=tuple(facts.instance_sha256),
                            study_uid=facts.study_uid,
                            findings=tuple(facts.findings),
                            pipeline_named=facts.pipeline_named,
                            routing_overridden=tuple(facts.routing_overridden),
                            origin_ae=facts.origin_ae,
                            origin_address=facts.origin_address,
                            status=status,
                            latency_ms=(time.perf_counter() - start) * 1e3,
                        )
                    )
                    _current.reset(token)

            return wrapped

        return rewrap(handler, wrap)
