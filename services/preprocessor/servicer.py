"""Preprocessor RPCs: protobuf in and out, transforms in core."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from services.common import convert
from services.common.exchange import PixelExchange
from services.common.listeners import Service
from services.common.metrics import Stage, stage_timer
from services.common.pipelines import PipelineRegistry
from services.preprocessor.core import prepare_batch
from services.preprocessor.volume import prepare_series

# The one stage this service times; server.py pre-registers its metric series.
STAGE = Stage.PREPROCESS


class PreprocessorServicer(preprocessor_pb2_grpc.PreprocessorServicer):
    def __init__(self, registry: PipelineRegistry, exchange: PixelExchange | None = None) -> None:
        self._registry = registry
        self._exchange = exchange

    def Preprocess(  # noqa: N802 (gRPC naming)
        self, request: preprocessor_pb2.PreprocessRequest, context: grpc.ServicerContext
    ) -> preprocessor_pb2.PreprocessResponse:
        # An unknown pipeline fails first, before any tensor is read or pixels are taken.
        pipeline = self._registry.get(request.pipeline)
        job = convert.preprocess_request_from_proto(request)
        images = [convert.take_pixels(image, self._exchange) for image in job.images]
        prepare = prepare_series if pipeline.kind == "volume" else prepare_batch
        with stage_timer(Service.PREPROCESSOR, STAGE):
            prepared = prepare(images, pipeline)
        return convert.preprocess_response_to_proto(prepared)
