"""Postprocessor RPCs: protobuf in and out, rules in core."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import findings_pb2, postprocessor_pb2, postprocessor_pb2_grpc
from services.common import tensors
from services.common.convert import (
    grid_from_proto,
    prepared_from_proto,
    priority_to_proto,
    segmentation_to_proto,
)
from services.common.metrics import stage_timer
from services.common.pipelines import PipelineRegistry
from services.postprocessor.core import assess


class PostprocessorServicer(postprocessor_pb2_grpc.PostprocessorServicer):
    def __init__(self, registry: PipelineRegistry) -> None:
        self._registry = registry

    def Postprocess(  # noqa: N802 (gRPC naming)
        self, request: postprocessor_pb2.PostprocessRequest, context: grpc.ServicerContext
    ) -> postprocessor_pb2.PostprocessResponse:
        pipeline = self._registry.get(request.pipeline)
        outputs = {name: tensors.from_proto(t) for name, t in request.outputs.items()}
        prepared = prepared_from_proto(request.geometries)
        grid = grid_from_proto(request.volume) if request.HasField("volume") else None
        with stage_timer("postprocessor", "postprocess"):
            result = assess(outputs, list(request.sop_instance_uids), pipeline, prepared, grid)
        return postprocessor_pb2.PostprocessResponse(
            findings=[findings_pb2.Finding(**vars(f)) for f in result.findings],
            triage_priority=priority_to_proto(result.triage_priority),
            measurements=[findings_pb2.Measurement(**vars(m)) for m in result.measurements],
            segmentations=[segmentation_to_proto(s) for s in result.segmentations],
        )
