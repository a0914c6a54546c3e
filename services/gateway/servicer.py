"""Public Gateway RPCs: messages <-> StudyAnalyzer, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import convert, logs
from services.common.errors import InvalidInput
from services.gateway.core import StudyAnalyzer, assemble_instances


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, analyzer: StudyAnalyzer, max_instances: int, max_study_bytes: int) -> None:
        self._analyzer = analyzer
        self._max_instances = max_instances
        self._max_study_bytes = max_study_bytes

    def Analyze(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        rid = logs.adopt_client_request_id(request.client_request_id)
        study = convert.study_request(request, list(request.instances), rid)
        return convert.analyze_response(self._analyzer.analyze(study))

    def AnalyzeStream(  # noqa: N802 (gRPC naming)
        self, request_iterator: Iterator[gateway_pb2.AnalyzeChunk], context: grpc.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the stream must start with an AnalyzeHeader message")

        def chunks() -> Iterator[tuple[int, bytes]]:
            for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidInput("only the first message of the stream may be a header")
                yield message.chunk.instance_index, message.chunk.data

        rid = logs.adopt_client_request_id(first.header.client_request_id)
        instances = assemble_instances(chunks(), self._max_instances, self._max_study_bytes)
        study = convert.study_request(first.header, instances, rid)
        return convert.analyze_response(self._analyzer.analyze(study))

    def ListPipelines(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.ListPipelinesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListPipelinesResponse:
        return gateway_pb2.ListPipelinesResponse(
            pipelines=[
                convert.pipeline_info(p, self._analyzer.card(p))
                for p in self._analyzer.registry.all()
            ]
        )
