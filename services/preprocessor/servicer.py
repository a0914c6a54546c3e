"""Preprocessor RPCs: protobuf in and out, transforms in core."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from services.common import tensors
from services.common.convert import geometry_to_proto, grid_to_proto, image_from_proto
from services.common.metrics import stage_timer
from services.common.pipelines import PipelineRegistry
from services.preprocessor.core import prepare_batch
from services.preprocessor.volume import prepare_volume


class PreprocessorServicer(preprocessor_pb2_grpc.PreprocessorServicer):
    def __init__(self, registry: PipelineRegistry) -> None:
        self._registry = registry

    def Preprocess(  # noqa: N802 (gRPC naming)
        self, request: preprocessor_pb2.PreprocessRequest, context: grpc.ServicerContext
    ) -> preprocessor_pb2.PreprocessResponse:
        pipeline = self._registry.get(request.pipeline)
        images = [image_from_proto(image) for image in request.images]
        with stage_timer("preprocessor", "preprocess"):
            if pipeline.kind == "volume":
                batch, grid = prepare_volume(images, pipeline)
                return preprocessor_pb2.PreprocessResponse(
                    batch=tensors.to_proto(batch),
                    input_name=pipeline.model.input,
                    volume=grid_to_proto(grid),
                )
            batch, prepared = prepare_batch(images, pipeline)
        return preprocessor_pb2.PreprocessResponse(
            batch=tensors.to_proto(batch),
            input_name=pipeline.model.input,
            geometries=[geometry_to_proto(p.geometry) for p in prepared],
        )
