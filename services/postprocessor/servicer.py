"""Postprocessor RPCs: protobuf in and out, rules in core."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import postprocessor_pb2, postprocessor_pb2_grpc
from services.common import convert
from services.common.listeners import Service
from services.common.metrics import Stage, stage_timer
from services.common.pipelines import PipelineRegistry
from services.postprocessor import monitoring
from services.postprocessor.core import assess

# The one stage this service times; server.py pre-registers its metric series.
STAGE = Stage.POSTPROCESS


class PostprocessorServicer(postprocessor_pb2_grpc.PostprocessorServicer):
    def __init__(self, registry: PipelineRegistry) -> None:
        self._registry = registry

    def Postprocess(  # noqa: N802 (gRPC naming)
        self, request: postprocessor_pb2.PostprocessRequest, context: grpc.ServicerContext
    ) -> postprocessor_pb2.PostprocessResponse:
        # An unknown pipeline fails first, before any tensor is read.
        pipeline = self._registry.get(request.pipeline)
        job = convert.postprocess_request_from_proto(request)
        with stage_timer(Service.POSTPROCESSOR, STAGE):
            result = assess(job, pipeline)
        monitoring.record(pipeline, result)
        return convert.postprocess_response_to_proto(result)
