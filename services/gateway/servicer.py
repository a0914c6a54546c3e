"""Public Gateway RPCs (asyncio): messages <-> StudyAnalyzer, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import convert, logs
from services.common.errors import InvalidInput
from services.gateway import deadlines
from services.gateway.auth import caller
from services.gateway.core import Admission, InstanceAssembler, StudyAnalyzer


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        analyzer: StudyAnalyzer,
        admission: Admission,
        max_instances: int,
        max_study_bytes: int,
    ) -> None:
        self._analyzer = analyzer
        self._admission = admission
        self._max_instances = max_instances
        self._max_study_bytes = max_study_bytes

    async def Analyze(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        deadlines.begin(context)
        rid = logs.adopt_client_request_id(request.client_request_id)
        async with self._admission.slot():  # a waiting study keeps only its received message
            study = convert.study_request(request, list(request.instances), rid, caller.get())
            return convert.analyze_response(await self._analyzer.analyze(study))

    async def AnalyzeStream(  # noqa: N802 (gRPC naming)
        self,
        request_iterator: AsyncIterator[gateway_pb2.AnalyzeChunk],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.AnalyzeResponse:
        deadlines.begin(context)
        async with self._admission.slot():  # receiving a stream holds memory too
            return await self._analyze_stream(request_iterator)

    async def _analyze_stream(
        self, request_iterator: AsyncIterator[gateway_pb2.AnalyzeChunk]
    ) -> gateway_pb2.AnalyzeResponse:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the stream must start with an AnalyzeHeader message")
        rid = logs.adopt_client_request_id(first.header.client_request_id)
        assembler = InstanceAssembler(self._max_instances, self._max_study_bytes)
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidInput("only the first message of the stream may be a header")
            assembler.add(message.chunk.instance_index, message.chunk.data)
        study = convert.study_request(first.header, assembler.instances(), rid, caller.get())
        return convert.analyze_response(await self._analyzer.analyze(study))

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
