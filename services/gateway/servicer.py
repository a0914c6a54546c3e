"""Public Gateway RPCs (asyncio): messages <-> StudyAnalyzer, nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import convert, logs
from services.common.errors import InvalidInput
from services.gateway import deadlines
from services.gateway.auth import caller
from services.gateway.core import Admission, InstanceAssembler, StudyAnalyzer
from services.gateway.receiving import DeadlineReader


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        analyzer: StudyAnalyzer,
        admission: Admission,
        stream_idle_seconds: float,
        stream_receive_seconds: float,
    ) -> None:
        self._analyzer = analyzer
        self._admission = admission
        self._idle, self._receive = stream_idle_seconds, stream_receive_seconds

    async def Analyze(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        deadlines.begin(context)
        rid = logs.adopt_client_request_id(request.client_request_id)
        study = convert.study_request(request, list(request.instances), rid, caller.get())
        study = self._analyzer.admit(study)
        async with self._admission.slot(study.client):  # a waiting study keeps its message
            return convert.analyze_response(await self._analyzer.analyze(study, admitted=True))

    async def AnalyzeStream(  # noqa: N802 (gRPC naming)
        self,
        request_iterator: AsyncIterator[gateway_pb2.AnalyzeChunk],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.AnalyzeResponse:
        """The header is judged (policy, rate limit, pipeline) before the study takes a slot
        or a chunk is buffered; every message must come within the idle and total deadlines."""
        deadlines.begin(context)
        messages = DeadlineReader(request_iterator, self._idle, self._receive)
        first = await messages.next()
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the stream must start with an AnalyzeHeader message")
        rid = logs.adopt_client_request_id(first.header.client_request_id)
        header = self._analyzer.admit(convert.study_request(first.header, [], rid, caller.get()))
        async with self._admission.slot(header.client):  # receiving a stream holds memory too
            # A named pipeline's own limits apply while receiving; else the gateway's.
            assembler = InstanceAssembler(self._analyzer.receiving_limits(header))
            async for message in messages:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidInput("only the first message of the stream may be a header")
                assembler.add(message.chunk.instance_index, message.chunk.data)
            study = dataclasses.replace(header, instances=assembler.instances())
            return convert.analyze_response(await self._analyzer.analyze(study, admitted=True))

    async def ListPipelines(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.ListPipelinesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListPipelinesResponse:
        deadlines.begin(context)
        registry = self._analyzer.registry
        return gateway_pb2.ListPipelinesResponse(
            pipelines=[
                convert.pipeline_info(p, await self._analyzer.card(p)) for p in registry.all()
            ]
        )
