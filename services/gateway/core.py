"""The gateway's data plane: a study in, an assessment out, one stage after another.

Backends are injected (protocols below) so the orchestration, limits and routing are tested
without gRPC; the servicer only converts messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from services.common.cards import ModelCard, card_from_parameters
from services.common.errors import (
    DependencyUnavailable,
    InvalidInput,
    TooLarge,
)
from services.common.images import Decoded, Preprocessed, join_batches
from services.common.metrics import stage_timer
from services.common.pipelines import Pipeline, PipelineRegistry
from services.common.results import Assessment, ModelRef, StudyRequest, StudyResult

log = logging.getLogger(__name__)

# Stages the gateway times for every study (metrics and AnalyzeResponse.timings).
STAGES = ("decode", "preprocess", "infer", "postprocess", "total")


class Decoder(Protocol):
    def decode(self, dicom: bytes, request_id: str) -> Decoded: ...


class Preprocessor(Protocol):
    def preprocess(
        self, pipeline: str, images: Sequence[Decoded], request_id: str
    ) -> Preprocessed: ...


class InferenceServer(Protocol):
    def infer(
        self,
        model: str,
        version: str,
        input_name: str,
        batch: np.ndarray,
        output_names: Sequence[str],
        priority: int,
        request_id: str,
    ) -> dict[str, np.ndarray]: ...


@runtime_checkable
class ModelMetadata(Protocol):
    def model_parameters(self, model: str, version: str) -> dict[str, str]: ...


class Postprocessor(Protocol):
    def postprocess(
        self,
        pipeline: str,
        outputs: Mapping[str, np.ndarray],
        sop_instance_uids: Sequence[str],
        prepared: Preprocessed,
        heatmaps: bool,
        request_id: str,
    ) -> Assessment: ...


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_study_bytes: int


class StudyAnalyzer:
    """Decode (in parallel) -> route -> preprocess (in parallel) -> infer -> postprocess."""

    def __init__(
        self,
        registry: PipelineRegistry,
        decoder: Decoder,
        preprocessor: Preprocessor,
        inference: InferenceServer,
        postprocessor: Postprocessor,
        limits: Limits,
        workers: int = 8,
    ) -> None:
        self.registry = registry
        self._decoder = decoder
        self._preprocessor = preprocessor
        self._inference = inference
        self._postprocessor = postprocessor
        self._limits = limits
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="study")

    def check_limits(self, instances: Sequence[bytes]) -> None:
        if not instances:
            raise InvalidInput("the request contains no DICOM instances")
        if len(instances) > self._limits.max_instances:
            raise TooLarge(
                f"study has {len(instances)} instances; the limit is {self._limits.max_instances}"
            )
        total = sum(len(i) for i in instances)
        if total > self._limits.max_study_bytes:
            raise TooLarge(f"study is {total} bytes; the limit is {self._limits.max_study_bytes}")
        for index, instance in enumerate(instances):
            if not instance:
                raise InvalidInput(f"instance {index} is empty")

    def analyze(self, request: StudyRequest) -> StudyResult:
        self.check_limits(request.instances)
        seconds: dict[str, float] = {}
        with stage_timer("gateway", "total", seconds):
            assessment, pipeline, prepared = self._run(request, seconds)
        for warning in prepared.warnings:
            log.warning("pipeline %s: %s", pipeline.name, warning)
        return StudyResult(
            request_id=request.request_id,
            pipeline=pipeline.name,
            model=ModelRef(pipeline.model.name, pipeline.model.version),
            assessment=assessment,
            timings_ms={stage: s * 1e3 for stage, s in seconds.items()},
            warnings=prepared.warnings,
        )

    def _run(
        self, request: StudyRequest, seconds: dict[str, float]
    ) -> tuple[Assessment, Pipeline, Preprocessed]:
        rid = request.request_id
        # Name the pipeline first so an unknown name fails before any decoding work.
        named: Pipeline | None = self.registry.get(request.pipeline) if request.pipeline else None
        with stage_timer("gateway", "decode", seconds):
            images = list(self._pool.map(lambda d: self._decoder.decode(d, rid), request.instances))
        attributes = [i.attributes for i in images]
        pipeline = (
            self.registry.check(named, attributes) if named else self.registry.route(attributes)
        )
        with stage_timer("gateway", "preprocess", seconds):
            prepared = self._preprocess(pipeline, images, rid)
        model = pipeline.model
        with stage_timer("gateway", "infer", seconds):
            outputs = self._inference.infer(
                model.name,
                model.version,
                model.input,
                prepared.batch,
                _outputs_needed(pipeline, request.options.heatmaps),
                request.priority.triton_priority,
                rid,
            )
        uids = (
            [prepared.grid.series_instance_uid]
            if prepared.grid is not None
            else [i.attributes.sop_instance_uid for i in images]
        )
        with stage_timer("gateway", "postprocess", seconds):
            assessment = self._postprocessor.postprocess(
                pipeline.name, outputs, uids, prepared, request.options.heatmaps, rid
            )
        return assessment, pipeline, prepared

    def _preprocess(self, pipeline: Pipeline, images: list[Decoded], rid: str) -> Preprocessed:
        if pipeline.kind == "volume":  # the series is one model input
            return self._preprocessor.preprocess(pipeline.name, images, rid)
        # One call per image keeps each message the size of one image and spreads the work
        # over preprocessor replicas; the batch is assembled here.
        parts = list(
            self._pool.map(lambda i: self._preprocessor.preprocess(pipeline.name, [i], rid), images)
        )
        return Preprocessed(
            join_batches([p.batch for p in parts], pipeline.name),
            [g for p in parts for g in p.geometries],
            warnings=[w for p in parts for w in p.warnings],
        )

    def card(self, pipeline: Pipeline) -> ModelCard | None:
        """The model's card from its served config; None while the server cannot say."""
        if not isinstance(self._inference, ModelMetadata):
            return None
        try:
            parameters = self._inference.model_parameters(
                pipeline.model.name, pipeline.model.version
            )
        except DependencyUnavailable:
            return None
        return card_from_parameters(pipeline.model.name, pipeline.model.version, parameters)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _outputs_needed(pipeline: Pipeline, heatmaps: bool) -> list[str]:
    """The model outputs to ask Triton for: class activation maps only when heatmaps are."""
    maps = {rule.heatmap_output for rule in pipeline.postprocess.findings}
    return [name for name in pipeline.model.outputs if heatmaps or name not in maps]


def assemble_instances(
    chunks: Iterable[tuple[int, bytes]], max_instances: int, max_study_bytes: int
) -> list[bytes]:
    """Join streamed chunks into instances, enforcing order and limits while receiving.

    Limits are checked as bytes arrive, so an oversized stream is refused without buffering
    all of it.
    """
    parts: list[bytearray] = []
    total = 0
    for index, data in chunks:
        if index == len(parts):
            if index >= max_instances:
                raise TooLarge(f"study has more than {max_instances} instances")
            parts.append(bytearray())
        elif index != len(parts) - 1:
            raise InvalidInput(
                f"chunk for instance {index} arrived out of order (expected "
                f"{len(parts) - 1} or {len(parts)})"
            )
        total += len(data)
        if total > max_study_bytes:
            raise TooLarge(f"study exceeds the limit of {max_study_bytes} bytes")
        parts[index] += data
    return [bytes(p) for p in parts]
