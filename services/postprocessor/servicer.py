"""Postprocessor RPCs: protobuf in and out, rules in core."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import postprocessor_pb2, postprocessor_pb2_grpc
from services.common import convert, tensors
from services.common.metrics import stage_timer
from services.common.pipelines import PipelineRegistry
from services.postprocessor import monitoring
from services.postprocessor.core import assess


class PostprocessorServicer(postprocessor_pb2_grpc.PostprocessorServicer):
    def __init__(self, registry: PipelineRegistry) -> None:
        self._registry = registry

    def Postprocess(  # noqa: N802 (gRPC naming)
        self, request: postprocessor_pb2.PostprocessRequest, context: grpc.ServicerContext
    ) -> postprocessor_pb2.PostprocessResponse:
        pipeline = self._registry.get(request.pipeline)
        outputs = {name: tensors.from_proto(t) for name, t in request.outputs.items()}
        geometries = [convert.geometry_from_proto(g) for g in request.geometries]
        grid = convert.grid_from_proto(request.volume) if request.HasField("volume") else None
        with stage_timer("postprocessor", "postprocess"):
            result = assess(
                outputs,
                list(request.sop_instance_uids),
                pipeline,
                geometries,
                grid,
                draw_heatmaps=request.heatmaps,
                keep_masks=request.masks,
                caveats=[convert.caveat_from_proto(c) for c in request.caveats],
            )
        monitoring.record(pipeline, result)
        return convert.assessment_to_proto(result)
