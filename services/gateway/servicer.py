"""Public Gateway RPCs: messages <-> StudyAnalyzer, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.api.imaging.v1 import findings_pb2, gateway_pb2, gateway_pb2_grpc
from services.common import logs
from services.common.cards import ModelCard
from services.common.convert import priority_to_proto, segmentation_to_proto
from services.common.errors import InvalidInput
from services.gateway.core import (
    RequestPriority,
    StudyAnalyzer,
    StudyRequest,
    StudyResult,
    assemble_instances,
)

_PRIORITY: dict[int, RequestPriority] = {
    gateway_pb2.REQUEST_PRIORITY_UNSPECIFIED: "DEFAULT",
    gateway_pb2.REQUEST_PRIORITY_ROUTINE: "ROUTINE",
    gateway_pb2.REQUEST_PRIORITY_URGENT: "URGENT",
}


def _priority(value: int) -> RequestPriority:
    if value not in _PRIORITY:
        raise InvalidInput(f"unknown request priority {value}")
    return _PRIORITY[value]


def _response(result: StudyResult) -> gateway_pb2.AnalyzeResponse:
    return gateway_pb2.AnalyzeResponse(
        request_id=result.request_id,
        pipeline=result.pipeline,
        model=gateway_pb2.ModelRef(name=result.model_name, version=result.model_version),
        findings=[findings_pb2.Finding(**vars(f)) for f in result.findings],
        triage_priority=priority_to_proto(result.triage_priority),
        timings=[
            gateway_pb2.StageTiming(stage=stage, milliseconds=ms)
            for stage, ms in result.timings_ms.items()
        ],
        measurements=[findings_pb2.Measurement(**vars(m)) for m in result.measurements],
        segmentations=[segmentation_to_proto(s) for s in result.segmentations],
    )


def _card(card: ModelCard | None) -> gateway_pb2.ModelCard | None:
    return gateway_pb2.ModelCard(**vars(card)) if card is not None else None


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, analyzer: StudyAnalyzer, max_instances: int, max_study_bytes: int) -> None:
        self._analyzer = analyzer
        self._max_instances = max_instances
        self._max_study_bytes = max_study_bytes

    def Analyze(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        study = StudyRequest(
            instances=list(request.instances),
            pipeline=request.pipeline,
            priority=_priority(request.priority),
            request_id=request.client_request_id or logs.request_id.get(),
        )
        return _response(self._analyzer.analyze(study))

    def AnalyzeStream(  # noqa: N802 (gRPC naming)
        self, request_iterator: Iterator[gateway_pb2.AnalyzeChunk], context: grpc.ServicerContext
    ) -> gateway_pb2.AnalyzeResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("the stream must start with an AnalyzeHeader message")
        header = first.header

        def chunks() -> Iterator[tuple[int, bytes]]:
            for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidInput("only the first message of the stream may be a header")
                yield message.chunk.instance_index, message.chunk.data

        study = StudyRequest(
            instances=assemble_instances(chunks(), self._max_instances, self._max_study_bytes),
            pipeline=header.pipeline,
            priority=_priority(header.priority),
            request_id=header.client_request_id or logs.request_id.get(),
        )
        return _response(self._analyzer.analyze(study))

    def ListPipelines(  # noqa: N802 (gRPC naming)
        self, request: gateway_pb2.ListPipelinesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListPipelinesResponse:
        return gateway_pb2.ListPipelinesResponse(
            pipelines=[
                gateway_pb2.PipelineInfo(
                    name=p.name,
                    description=p.description,
                    model=gateway_pb2.ModelRef(name=p.model.name, version=p.model.version),
                    accepts=p.match.describe(),
                    card=_card(self._analyzer.card(p)),
                    auto_route=p.auto_route,
                )
                for p in self._analyzer.registry.all()
            ]
        )
