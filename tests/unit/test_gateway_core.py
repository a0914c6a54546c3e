import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waiting import async_pause, async_wait_until

from services.common.cards import ModelCard
from services.common.errors import (
    ContractViolation,
    DeadlineExceeded,
    DependencyUnavailable,
    InvalidInput,
    Misconfiguration,
    NoMatchingPipeline,
    NotFound,
    OutsideIntendedUse,
    Overloaded,
    PlatformError,
    StudyRefused,
    TooLarge,
)
from services.common.grids import VolumeGrid
from services.common.images import DecodedImage, Geometry, ImageAttributes, Preprocessed
from services.common.jobs import PostprocessJob
from services.common.pipelines import PipelineRegistry
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    CodedConcept,
    EncodedObject,
    Finding,
    ModelRef,
    OutputOptions,
    Refusal,
    RequestPriority,
    StudyRequest,
    StudyResult,
    TriagePriority,
)
from services.gateway.core import STAGES, Admission, InstanceAssembler, Limits, StudyAnalyzer

# Decoded pixels per study, far above what these tests decode unless one sets its own.
DECODED = 2**31


def assemble_instances(
    chunks: Iterable[tuple[int, bytes]], max_instances: int, max_study_bytes: int
) -> list[bytes]:
    assembler = InstanceAssembler(Limits(max_instances, max_study_bytes, DECODED))
    for index, data in chunks:
        assembler.add(index, data)
    return assembler.instances()


def test_chunks_are_joined_per_instance_in_order() -> None:
    chunks = [(0, b"ab"), (0, b"c"), (1, b"de"), (2, b""), (2, b"f")]
    assert assemble_instances(chunks, 10, 100) == [b"abc", b"de", b"f"]


def test_out_of_order_chunks_are_invalid() -> None:
    with pytest.raises(InvalidInput, match="out of order"):
        assemble_instances([(0, b"a"), (2, b"b")], 10, 100)
    with pytest.raises(InvalidInput, match="out of order"):
        assemble_instances([(0, b"a"), (1, b"b"), (0, b"c")], 10, 100)


def test_limits_are_enforced_while_receiving() -> None:
    def endless():
        index = 0
        while True:
            yield index, b"x" * 10
            index += 1

    with pytest.raises(TooLarge, match="4 instances; the limit is 3"):
        assemble_instances(endless(), 3, 10**6)
    with pytest.raises(TooLarge, match="30 bytes; the limit is 25"):
        assemble_instances(((0, b"x" * 10) for _ in range(100)), 3, 25)


# --- StudyAnalyzer with fake backends ---------------------------------------------------------

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
SERIES_UID = "1.2.826.0.1.3680043.10.1.77"
AUTO_ROUTED = ("cxr_pneumonia", "mri_brain_extraction", "us_breast")


@pytest.fixture(scope="module")
def registry() -> PipelineRegistry:
    return PipelineRegistry.load(PIPELINES)


IN_POPULATION_AGE = {"CR": 4.0, "DX": 4.0, "US": 45.0, "MR": 40.0}


def study(
    n: int, modality: str = "CR", body_part: str = "CHEST", age: float | None = -1.0
) -> tuple[list[bytes], dict[bytes, ImageAttributes]]:
    """n distinct instances and the attributes the fake decoder returns for each: by default
    inside their pipeline's intended use (a child's PA chest, an adult's breast)."""
    instances = [f"dicom-{index}".encode() for index in range(n)]
    attributes = {
        data: ImageAttributes(
            sop_instance_uid=f"1.2.3.{index}",
            series_instance_uid=SERIES_UID,
            modality=modality,
            body_part_examined=body_part,
            instance_number=index,
            view_position="PA" if modality in ("CR", "DX") else "",
            patient_age_years=IN_POPULATION_AGE.get(modality) if age == -1.0 else age,
        )
        for index, data in enumerate(instances)
    }
    return instances, attributes


class InFlight:
    """Counts calls running at once (the peak proves they overlapped) and calls cancelled."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.cancelled = 0

    async def run(self, work: Callable[[], Any]) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await work()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.now -= 1


async def meet(barrier: asyncio.Barrier | None) -> None:
    if barrier is not None:
        await asyncio.wait_for(barrier.wait(), 5)


class FakeDecoder:
    """Pixels hold the instance's index; optionally waits at a barrier, then finishes in
    reverse instance order so that results arriving out of order would be noticed."""

    def __init__(
        self,
        attributes: Mapping[bytes, ImageAttributes],
        barrier: asyncio.Barrier | None = None,
        error: PlatformError | None = None,
        slow: float = 0.0,
    ) -> None:
        self.attributes = dict(attributes)
        self.barrier = barrier
        self.error = error
        self.slow = slow  # every instance but the first takes this long
        self.calls: list[tuple[bytes, str]] = []
        self.in_flight = InFlight()

    async def decode(self, dicom: bytes, request_id: str) -> DecodedImage:
        self.calls.append((dicom, request_id))

        async def work() -> DecodedImage:
            attrs = self.attributes.get(dicom)
            if self.slow and attrs is not None and attrs.instance_number > 0:
                await async_pause(self.slow, "a slow decode, simulated")
            if self.error is not None:
                raise self.error
            assert attrs is not None
            if self.barrier is not None:
                await meet(self.barrier)
                # Later instances finish first: results must be put back in order.
                await async_pause(
                    0.01 * (len(self.attributes) - attrs.instance_number), "finish out of order"
                )
            return DecodedImage(np.full((1, 4, 4, 1), attrs.instance_number, np.uint16), attrs)

        return await self.in_flight.run(work)  # type: ignore[no-any-return]


class FakePreprocessor:
    """Image pipelines: a 1-row batch filled with the image's index; volume pipelines: one
    row for the series with its grid."""

    def __init__(
        self,
        barrier: asyncio.Barrier | None = None,
        error: PlatformError | None = None,
        volume_warnings: Sequence[str] = (),
    ) -> None:
        self.barrier = barrier
        self.error = error
        self.volume_warnings = list(volume_warnings)
        self.calls: list[tuple[str, list[DecodedImage], str]] = []
        self.in_flight = InFlight()

    async def preprocess(
        self, pipeline: str, images: Sequence[DecodedImage], request_id: str
    ) -> Preprocessed:
        self.calls.append((pipeline, list(images), request_id))
        return await self.in_flight.run(  # type: ignore[no-any-return]
            lambda: self._preprocess(pipeline, images)
        )

    async def _preprocess(self, pipeline: str, images: Sequence[DecodedImage]) -> Preprocessed:
        if self.error is not None:
            raise self.error
        if pipeline == "mri_brain_extraction":
            grid = VolumeGrid(SERIES_UID, (len(images), 4, 4), (1.0, 1.0, 1.0), np.eye(4))
            return Preprocessed(
                np.zeros((1, 2, 2, 2, 1), np.float32), [], grid, list(self.volume_warnings)
            )
        (image,) = images
        index = int(image.pixels[0, 0, 0, 0])
        if self.barrier is not None:
            await meet(self.barrier)
            await async_pause(0.01 * max(0, 10 - index), "finish out of order")
        return Preprocessed(
            np.full((1, 1, 2, 2), index, np.float32),
            [Geometry(4 + index, 4, 0, 0, 4, 4)],
            warnings=[f"image {index} was cropped"],
        )


class FakeInference:
    def __init__(self, error: PlatformError | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.outputs: dict[str, np.ndarray] = {}

    async def infer(
        self,
        model: str,
        version: str,
        input_name: str,
        batch: np.ndarray,
        output_names: Sequence[str],
        priority: int,
        request_id: str,
    ) -> dict[str, np.ndarray]:
        self.calls.append(
            {
                "model": model,
                "version": version,
                "input_name": input_name,
                "batch": batch.copy(),
                "output_names": list(output_names),
                "priority": priority,
                "request_id": request_id,
            }
        )
        if self.error is not None:
            raise self.error
        await async_pause(self.delay, "inference time, simulated")
        self.outputs = {name: np.zeros((len(batch), 1), np.float32) for name in output_names}
        return self.outputs


class FakeInferenceWithMetadata(FakeInference):
    def __init__(self, parameters: dict[str, str] | PlatformError) -> None:
        super().__init__()
        self.parameters = parameters
        self.metadata_calls: list[tuple[str, str]] = []

    async def model_parameters(self, model: str, version: str) -> dict[str, str]:
        self.metadata_calls.append((model, version))
        if isinstance(self.parameters, PlatformError):
            raise self.parameters
        return self.parameters


PNEUMONIA = CodedConcept(code="233604007", display_name="Pneumonia")


class FakePostprocessor:
    def __init__(self, error: PlatformError | None = None) -> None:
        self.error = error
        self.calls: list[tuple[PostprocessJob, str]] = []

    async def postprocess(self, job: PostprocessJob, request_id: str) -> Assessment:
        self.calls.append((job, request_id))
        if self.error is not None:
            raise self.error
        png = b"PNG" if job.heatmaps else b""
        findings = [
            Finding(PNEUMONIA, 0.9, 0.68, positive=True, sop_instance_uid=uid, heatmap_png=png)
            for uid in job.sop_instance_uids
        ]
        return Assessment(findings, TriagePriority.URGENT)


class FakeReporter:
    """Records what the documents were built from (services/gateway/reporting.py is real)."""

    def __init__(self) -> None:
        self.built: list[StudyResult] = []
        self.refused: list[tuple[str, str]] = []
        self.seeds: list[str] = []  # each build's uid_seed

    def outputs(
        self,
        instances: Sequence[bytes],
        result: StudyResult,
        options: OutputOptions,
        *,
        uid_seed: str = "",
    ) -> list[EncodedObject]:
        self.built.append(result)
        self.seeds.append(uid_seed)
        return [EncodedObject("dicom_sr", "application/dicom", b"SR", name="sr")]

    def refusal(
        self,
        instances: Sequence[bytes],
        pipeline: str,
        refusal: Refusal,
        options: OutputOptions,
        *,
        uid_seed: str = "",
    ) -> list[EncodedObject]:
        self.refused.append((pipeline, refusal.reason))
        self.seeds.append(uid_seed)
        return [EncodedObject("dicom_sr", "application/dicom", b"WHY", name="refusal-sr")]


@dataclass
class Backends:
    decoder: FakeDecoder
    preprocessor: FakePreprocessor = field(default_factory=FakePreprocessor)
    inference: FakeInference = field(default_factory=FakeInference)
    postprocessor: FakePostprocessor = field(default_factory=FakePostprocessor)
    reporter: FakeReporter = field(default_factory=FakeReporter)


LIMITS = Limits(8, 1000, DECODED)


class Analyzer:
    """A StudyAnalyzer driven from a synchronous test: each call runs on a fresh event loop."""

    def __init__(self, analyzer: StudyAnalyzer) -> None:
        self._analyzer = analyzer

    def analyze(self, request: StudyRequest) -> StudyResult:
        return asyncio.run(self._analyzer.analyze(request))

    def card(self, pipeline: Any) -> ModelCard | None:
        return asyncio.run(self._analyzer.card(pipeline))

    async def analyze_async(self, request: StudyRequest) -> StudyResult:
        return await self._analyzer.analyze(request)


@pytest.fixture
def make_analyzer(registry: PipelineRegistry) -> Iterator[Callable[..., Analyzer]]:
    def make(backends: Backends, limits: Limits = LIMITS, fan_out: int = 8) -> Analyzer:
        return Analyzer(
            StudyAnalyzer(
                registry,
                backends.decoder,
                backends.preprocessor,
                backends.inference,
                backends.postprocessor,
                limits,
                fan_out=fan_out,
                reporter=backends.reporter,
            )
        )

    yield make


# 1. routing


@pytest.mark.parametrize(
    ("modality", "body_part", "expected", "version"),
    [
        ("CR", "CHEST", "cxr_pneumonia", "2"),
        ("DX", "chest", "cxr_pneumonia", "2"),
        ("US", "BREAST", "us_breast", "1"),
    ],
)
def test_studies_are_routed_by_their_tags(
    make_analyzer: Callable[..., Analyzer],
    modality: str,
    body_part: str,
    expected: str,
    version: str,
) -> None:
    instances, attributes = study(2, modality, body_part)
    backends = Backends(FakeDecoder(attributes))
    result = make_analyzer(backends).analyze(StudyRequest(instances, request_id="r1"))
    assert result.pipeline == expected
    assert result.model == ModelRef(expected, version)
    assert backends.inference.calls[0]["version"] == version
    assert {call[0] for call in backends.preprocessor.calls} == {expected}
    assert backends.inference.calls[0]["model"] == expected
    assert backends.postprocessor.calls[0][0].pipeline == expected


def test_a_study_no_pipeline_accepts_is_refused_with_each_pipelines_reason(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1, "CR", "KNEE")
    backends = Backends(FakeDecoder(attributes))
    with pytest.raises(NoMatchingPipeline) as excinfo:
        make_analyzer(backends).analyze(StudyRequest(instances))
    reason = excinfo.value.reason
    for name in AUTO_ROUTED:
        assert f"{name}:" in reason
    assert "cxr_pneumonia_ensemble" not in reason  # not auto-routed
    assert "'KNEE'" in reason
    assert len(backends.decoder.calls) == 1
    assert backends.preprocessor.calls == []
    assert backends.inference.calls == []


def test_a_named_pipeline_runs_even_when_not_auto_routed(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(2)
    backends = Backends(FakeDecoder(attributes))
    result = make_analyzer(backends).analyze(
        StudyRequest(instances, pipeline="cxr_pneumonia_ensemble")
    )
    assert result.pipeline == "cxr_pneumonia_ensemble"
    assert result.model == ModelRef("cxr_pneumonia_ensemble", "1")
    (call,) = backends.inference.calls
    assert call["model"] == "cxr_pneumonia_ensemble"
    assert call["output_names"] == ["logits"]


def test_a_named_pipeline_still_refuses_a_study_it_does_not_accept(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1, "CR", "CHEST")
    backends = Backends(FakeDecoder(attributes))
    with pytest.raises(NoMatchingPipeline, match="'us_breast' does not accept") as excinfo:
        make_analyzer(backends).analyze(StudyRequest(instances, pipeline="us_breast"))
    assert "Modality is 'CR'" in excinfo.value.reason
    assert backends.preprocessor.calls == []
    assert backends.inference.calls == []


def test_an_unknown_pipeline_name_fails_before_any_decoding(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(2)
    backends = Backends(FakeDecoder(attributes))
    with pytest.raises(NotFound, match="unknown pipeline 'no_such_pipeline'") as excinfo:
        make_analyzer(backends).analyze(StudyRequest(instances, pipeline="no_such_pipeline"))
    assert "cxr_pneumonia" in excinfo.value.reason  # lists what the deployment serves
    assert backends.decoder.calls == []
    assert backends.preprocessor.calls == []


# 2. limits


@pytest.mark.parametrize(
    ("instances", "error", "pattern"),
    [
        ([], InvalidInput, "no DICOM instances"),
        ([b"abc", b"", b"def"], InvalidInput, "instance 1 is empty"),
        ([b"x"] * 4, TooLarge, "4 instances; the limit is 3"),
        ([b"x" * 60, b"y" * 41], TooLarge, "101 bytes; the limit is 100"),
    ],
    ids=["no-instances", "empty-instance", "too-many-instances", "too-many-bytes"],
)
def test_limits_are_checked_before_decoding(
    make_analyzer: Callable[..., Analyzer],
    instances: list[bytes],
    error: type[PlatformError],
    pattern: str,
) -> None:
    backends = Backends(FakeDecoder({}))
    analyzer = make_analyzer(backends, Limits(3, 100, DECODED))
    with pytest.raises(error, match=pattern) as excinfo:
        analyzer.analyze(StudyRequest(instances))
    assert type(excinfo.value) is error
    assert backends.decoder.calls == []


def test_a_study_at_the_limits_is_accepted(make_analyzer: Callable[..., Analyzer]) -> None:
    instances, attributes = study(3)
    size = sum(len(i) for i in instances)
    backends = Backends(FakeDecoder(attributes))
    analyzer = make_analyzer(backends, Limits(3, size, DECODED))
    assert analyzer.analyze(StudyRequest(instances)).pipeline == "cxr_pneumonia"
    assert len(backends.decoder.calls) == 3


# 3. parallel decode and preprocess


def test_instances_are_decoded_and_preprocessed_in_parallel_and_kept_in_order(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    n = 5
    instances, attributes = study(n)
    backends = Backends(
        FakeDecoder(attributes, barrier=asyncio.Barrier(n)),
        FakePreprocessor(barrier=asyncio.Barrier(n)),
    )
    result = make_analyzer(backends, fan_out=n).analyze(StudyRequest(instances, request_id="r7"))

    assert sorted(d for d, _ in backends.decoder.calls) == sorted(instances)
    assert {rid for _, rid in backends.decoder.calls} == {"r7"}
    assert backends.decoder.in_flight.peak == n

    assert len(backends.preprocessor.calls) == n
    assert backends.preprocessor.in_flight.peak == n
    for pipeline, images, rid in backends.preprocessor.calls:
        assert (pipeline, len(images), rid) == ("cxr_pneumonia", 1, "r7")
    preprocessed = sorted(
        images[0].attributes.instance_number for _, images, _ in backends.preprocessor.calls
    )
    assert preprocessed == list(range(n))

    (call,) = backends.inference.calls
    expected = np.concatenate([np.full((1, 1, 2, 2), i, np.float32) for i in range(n)])
    np.testing.assert_array_equal(call["batch"], expected)
    assert call["batch"].shape == (n, 1, 2, 2)

    ((post, post_rid),) = backends.postprocessor.calls
    assert post.sop_instance_uids == tuple(f"1.2.3.{i}" for i in range(n))
    assert post.outputs is backends.inference.outputs
    assert post_rid == "r7"
    assert [g.rows for g in post.geometries] == [4 + i for i in range(n)]
    assert post.grid is None
    assert result.warnings == [f"image {i} was cropped" for i in range(n)]


def test_a_volume_pipeline_preprocesses_the_series_in_one_call(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    n = 4
    instances, attributes = study(n, "MR", "HEAD")
    backends = Backends(
        FakeDecoder(attributes, barrier=asyncio.Barrier(n)),
        FakePreprocessor(volume_warnings=["duplicates: 1 slice dropped"]),
    )
    result = make_analyzer(backends, fan_out=n).analyze(StudyRequest(instances, request_id="v1"))

    assert result.pipeline == "mri_brain_extraction"
    assert backends.decoder.in_flight.peak == n
    (call,) = backends.preprocessor.calls
    pipeline, images, rid = call
    assert (pipeline, rid) == ("mri_brain_extraction", "v1")
    assert [i.attributes.sop_instance_uid for i in images] == [f"1.2.3.{i}" for i in range(n)]
    (infer,) = backends.inference.calls
    assert (infer["model"], infer["input_name"], infer["output_names"]) == (
        "mri_brain_extraction",
        "volume",
        ["prob"],
    )
    assert infer["batch"].shape == (1, 2, 2, 2, 1)
    ((post, _),) = backends.postprocessor.calls
    assert post.sop_instance_uids == (SERIES_UID,)
    assert post.grid is not None and post.grid.series_instance_uid == SERIES_UID
    assert result.warnings == ["duplicates: 1 slice dropped"]


# 4. the inference call


@pytest.mark.parametrize(
    ("priority", "triton"),
    [(RequestPriority.URGENT, 1), (RequestPriority.DEFAULT, 0), (RequestPriority.ROUTINE, 2)],
)
def test_inference_gets_the_pipelines_model_and_the_request_priority(
    registry: PipelineRegistry,
    make_analyzer: Callable[..., Analyzer],
    priority: RequestPriority,
    triton: int,
) -> None:
    instances, attributes = study(2)
    backends = Backends(FakeDecoder(attributes))
    make_analyzer(backends).analyze(StudyRequest(instances, priority=priority, request_id="p"))
    spec = registry.get("cxr_pneumonia").model
    (call,) = backends.inference.calls
    assert call["model"] == "cxr_pneumonia" == spec.name
    assert call["version"] == spec.version == "2"
    assert call["input_name"] == "image" == spec.input
    # No heatmaps asked: the CAM is not fetched; the OOD score always is (its rule reads it).
    assert call["output_names"] == ["logits", "ood"]
    assert call["priority"] == triton
    assert call["request_id"] == "p"
    assert backends.postprocessor.calls[0][0].heatmaps is False


def test_heatmaps_when_asked_fetch_the_class_activation_map(
    registry: PipelineRegistry, make_analyzer: Callable[..., Analyzer]
) -> None:
    instances, attributes = study(2)
    backends = Backends(FakeDecoder(attributes))
    request = StudyRequest(instances, options=OutputOptions(heatmaps=True))
    make_analyzer(backends).analyze(request)
    (call,) = backends.inference.calls
    assert (
        call["output_names"]
        == ["logits", "cam", "ood"]
        == list(registry.get("cxr_pneumonia").model.outputs)
    )
    assert backends.postprocessor.calls[0][0].heatmaps is True
    assert backends.postprocessor.calls[0][0].masks is False


def test_masks_when_asked_reach_the_postprocessor(make_analyzer: Callable[..., Analyzer]) -> None:
    instances, attributes = study(3, "MR", "HEAD")
    backends = Backends(FakeDecoder(attributes))
    make_analyzer(backends).analyze(StudyRequest(instances, options=OutputOptions(masks=True)))
    assert backends.postprocessor.calls[0][0].masks is True


# 5. the result


def test_the_result_carries_pipeline_model_assessment_timings_and_warnings(
    registry: PipelineRegistry, make_analyzer: Callable[..., Analyzer]
) -> None:
    instances, attributes = study(2, "US", "BREAST")
    backends = Backends(FakeDecoder(attributes), inference=FakeInference(delay=0.02))
    result = make_analyzer(backends).analyze(StudyRequest(instances, request_id="res-1"))

    assert isinstance(result, StudyResult)
    assert result.request_id == "res-1"
    assert result.pipeline == "us_breast"
    assert result.model == ModelRef("us_breast", registry.get("us_breast").model.version)
    assert result.assessment.triage_priority is TriagePriority.URGENT
    assert [f.sop_instance_uid for f in result.assessment.findings] == ["1.2.3.0", "1.2.3.1"]
    assert result.assessment.findings[0].concept == PNEUMONIA

    timings = result.timings_ms
    # "report" only when documents are asked for (test_documents_are_built_...).
    assert set(timings) == set(STAGES) - {"report"}
    assert set(STAGES) == {"decode", "preprocess", "infer", "postprocess", "report", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["infer"] >= 20  # milliseconds, not seconds
    stages = sum(timings[s] for s in ("decode", "preprocess", "infer", "postprocess"))
    assert timings["total"] >= stages - 1e-6
    assert result.warnings == ["image 0 was cropped", "image 1 was cropped"]


# 6. errors from each backend propagate unchanged


ERRORS = [
    ("decoder", InvalidInput("instance is not DICOM")),
    ("decoder", TooLarge("image is 70000 x 70000 pixels")),
    ("decoder", DependencyUnavailable("decoder unreachable")),
    ("preprocessor", InvalidInput("RGB images are not accepted")),
    ("preprocessor", StudyRefused("the series has gaps")),
    ("inference", DependencyUnavailable("triton unreachable")),
    ("inference", DeadlineExceeded("triton took longer than 5 s")),
    ("inference", Misconfiguration("model has no input 'image'")),
    ("inference", ContractViolation("output 'cam' has shape (2,)")),
    ("postprocessor", ContractViolation("output 'logits' has 0 columns")),
]


@pytest.mark.parametrize(
    ("stage", "error"), ERRORS, ids=[f"{s}-{type(e).__name__}" for s, e in ERRORS]
)
def test_backend_errors_propagate_unchanged(
    make_analyzer: Callable[..., Analyzer], stage: str, error: PlatformError
) -> None:
    # StudyRefused from the preprocessor is what a volume pipeline refusing a series raises.
    volume = isinstance(error, StudyRefused)
    instances, attributes = study(3, "MR", "BRAIN") if volume else study(3)
    backends = Backends(FakeDecoder(attributes))
    if stage == "decoder":
        backends.decoder.error = error
    elif stage == "preprocessor":
        backends.preprocessor.error = error
    elif stage == "inference":
        backends.inference.error = error
    else:
        backends.postprocessor.error = error
    with pytest.raises(PlatformError) as excinfo:
        make_analyzer(backends).analyze(StudyRequest(instances))
    assert type(excinfo.value) is type(error)
    assert excinfo.value.reason == error.reason
    later = ["decoder", "preprocessor", "inference", "postprocessor"]
    for after in later[later.index(stage) + 1 :]:
        assert getattr(backends, after).calls == [], f"{after} ran after the {stage} failed"


# 7. model cards


def test_card_is_none_when_the_server_offers_no_metadata(
    registry: PipelineRegistry, make_analyzer: Callable[..., Analyzer]
) -> None:
    analyzer = make_analyzer(Backends(FakeDecoder({})))
    assert analyzer.card(registry.get("cxr_pneumonia")) is None


def test_card_is_none_while_the_server_is_unavailable(
    registry: PipelineRegistry, make_analyzer: Callable[..., Analyzer]
) -> None:
    inference = FakeInferenceWithMetadata(DependencyUnavailable("triton unreachable"))
    analyzer = make_analyzer(Backends(FakeDecoder({}), inference=inference))
    assert analyzer.card(registry.get("us_breast")) is None
    assert inference.metadata_calls == [("us_breast", registry.get("us_breast").model.version)]


def test_card_is_built_from_the_served_card_parameters(
    registry: PipelineRegistry, make_analyzer: Callable[..., Analyzer]
) -> None:
    inference = FakeInferenceWithMetadata(
        {
            "card.intended_use": "Triage of frontal chest radiographs",
            "card.not_for_use": "Paediatric patients",
            "card.metric.auc": "0.934",
            "card.metric.sensitivity": "0.9",
            "card.reference": "model_repository/cxr_pneumonia/MODEL_CARD.md",
            "execution_accelerator": "tensorrt",
        }
    )
    analyzer = make_analyzer(Backends(FakeDecoder({}), inference=inference))
    pipeline = registry.get("cxr_pneumonia")
    card = analyzer.card(pipeline)
    assert card == ModelCard(
        name="cxr_pneumonia",
        version=pipeline.model.version,
        intended_use="Triage of frontal chest radiographs",
        not_for_use="Paediatric patients",
        metrics={"auc": 0.934, "sensitivity": 0.9},
        card_reference="model_repository/cxr_pneumonia/MODEL_CARD.md",
    )
    assert inference.metadata_calls == [("cxr_pneumonia", pipeline.model.version)]


class UnevenPreprocessor(FakePreprocessor):
    """A pipeline without a resize step: each image keeps its own size."""

    async def preprocess(
        self, pipeline: str, images: Sequence[DecodedImage], request_id: str
    ) -> Preprocessed:
        (image,) = images
        side = 2 + int(image.pixels[0, 0, 0, 0])
        return Preprocessed(np.zeros((1, 1, side, side), np.float32), [Geometry(4, 4, 0, 0, 4, 4)])


def test_differently_sized_model_inputs_are_a_misconfiguration(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    from services.common.errors import Misconfiguration

    instances, attributes = study(2)
    backends = Backends(FakeDecoder(attributes), preprocessor=UnevenPreprocessor())
    with pytest.raises(Misconfiguration, match="differently sized inputs"):
        make_analyzer(backends).analyze(StudyRequest(instances))
    assert backends.inference.calls == []


# 8. fan-out and cancellation


def test_inner_calls_in_flight_per_study_are_bounded(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(8)
    backends = Backends(FakeDecoder(attributes, slow=0.01))
    make_analyzer(backends, Limits(8, 1000, DECODED), fan_out=3).analyze(StudyRequest(instances))
    assert len(backends.decoder.calls) == 8
    assert 1 < backends.decoder.in_flight.peak <= 3


def test_a_failed_instance_cancels_the_decodes_still_in_flight(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(4)
    # Instance 0 fails at once; the other three would take a minute.
    decoder = FakeDecoder(attributes, slow=60.0, error=InvalidInput("instance 0 is not DICOM"))
    backends = Backends(decoder)
    loop = asyncio.new_event_loop()
    try:
        started = loop.time()
        with pytest.raises(InvalidInput, match="instance 0 is not DICOM"):
            loop.run_until_complete(make_analyzer(backends).analyze_async(StudyRequest(instances)))
        assert loop.time() - started < 30
        assert decoder.in_flight.cancelled == 3
        assert decoder.in_flight.now == 0  # nothing of the study is still running
        assert [t for t in asyncio.all_tasks(loop) if not t.done()] == []
    finally:
        loop.close()
    assert backends.preprocessor.calls == []


def test_a_cancelled_study_cancels_its_inner_calls(make_analyzer: Callable[..., Analyzer]) -> None:
    instances, attributes = study(3)
    decoder = FakeDecoder(attributes, slow=60.0)
    analyzer = make_analyzer(Backends(decoder))

    async def give_up() -> None:
        task = asyncio.ensure_future(analyzer.analyze_async(StudyRequest(instances)))
        # Instance 0 finished; 1 and 2 are decoding.
        await async_wait_until(lambda: decoder.in_flight.now >= 2, 30, "1 and 2 not decoding")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    assert decoder.in_flight.cancelled == 2
    assert decoder.in_flight.now == 0


# 9. admission


def test_admission_runs_a_bounded_number_and_queues_a_bounded_number() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        admission = Admission(running=2, queued=1, per_client=0)
        release = asyncio.Event()
        running = peak = 0
        outcomes: list[str] = []

        async def study(name: str) -> None:
            nonlocal running, peak
            try:
                async with admission.slot():
                    running += 1
                    peak = max(peak, running)
                    await release.wait()
                    running -= 1
                outcomes.append(f"{name} done")
            except Overloaded as err:
                outcomes.append(f"{name} refused: {err.reason}")

        tasks = [asyncio.ensure_future(study(f"s{i}")) for i in range(4)]
        for _ in range(10):
            await asyncio.sleep(0)
        refused_before_release = len(outcomes)
        release.set()
        await asyncio.gather(*tasks)
        return peak, refused_before_release, outcomes

    peak, refused_early, outcomes = asyncio.run(scenario())
    assert peak == 2
    assert refused_early == 1  # s3 found 2 running and 1 waiting: refused at once
    assert (
        outcomes[0]
        == "s3 refused: the gateway is at capacity (2 studies running, 1 waiting); retry later"
    )
    assert sorted(outcomes[1:]) == ["s0 done", "s1 done", "s2 done"]


def test_a_slot_is_released_when_the_study_fails() -> None:
    async def scenario() -> None:
        admission = Admission(running=1, queued=0, per_client=0)
        with pytest.raises(InvalidInput):
            async with admission.slot():
                raise InvalidInput("bad study")
        async with admission.slot():  # not refused: the failed study gave its slot back
            pass

    asyncio.run(scenario())


def test_streamed_instances_are_buffered_once() -> None:
    assembler = InstanceAssembler(Limits(4, 100, DECODED))
    for index, data in [(0, b"ab"), (0, b"cd"), (1, b"ef")]:
        assembler.add(index, data)
    buffers = assembler._parts
    instances = assembler.instances()
    assert instances == [b"abcd", b"ef"]
    assert all(a is b for a, b in zip(instances, buffers, strict=True))  # handed over, not copied


def test_a_routed_pipeline_the_client_may_not_run_is_refused_before_preprocessing(
    registry: PipelineRegistry, tmp_path: Path
) -> None:
    from services.common.errors import PermissionDenied
    from services.gateway.policy import PolicyBook

    path = tmp_path / "policy.yaml"
    path.write_text("reading-room:\n  pipelines: [us_breast]\n")
    instances, attributes = study(2)  # a chest study: routed to cxr_pneumonia
    backends = Backends(FakeDecoder(attributes))
    analyzer = StudyAnalyzer(
        registry,
        backends.decoder,
        backends.preprocessor,
        backends.inference,
        backends.postprocessor,
        LIMITS,
        fan_out=8,
        policy=PolicyBook.load(path),
    )
    with pytest.raises(PermissionDenied, match="may not run pipeline 'cxr_pneumonia'"):
        asyncio.run(analyzer.analyze(StudyRequest(instances, client="reading-room")))
    assert len(backends.decoder.calls) == 2
    assert backends.preprocessor.calls == [] and backends.inference.calls == []


def test_a_study_over_its_decoded_bytes_budget_is_refused_and_the_rest_cancelled(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(4)
    # Each fake image is 1x4x4x1 uint16 = 32 bytes; the budget holds two and a half.
    decoder = FakeDecoder(attributes, slow=0.05)
    backends = Backends(decoder)
    analyzer = make_analyzer(
        backends, Limits(max_instances=8, max_study_bytes=1000, max_decoded_bytes=80)
    )
    with pytest.raises(TooLarge, match="decodes to more than 80 bytes"):
        analyzer.analyze(StudyRequest(instances))
    assert backends.preprocessor.calls == []
    budget_ok = make_analyzer(Backends(FakeDecoder(attributes)), Limits(8, 1000, 128))
    assert budget_ok.analyze(StudyRequest(instances)).pipeline == "cxr_pneumonia"


# --- intended use ---------------------------------------------------------------------------


@pytest.mark.parametrize("age", [64.0, 0.5])
def test_a_pipeline_that_refuses_outside_its_intended_use_runs_no_inference(
    make_analyzer: Callable[..., Analyzer], age: float
) -> None:
    instances, attributes = study(1, "CR", "CHEST", age=age)
    backends = Backends(FakeDecoder(attributes))
    with pytest.raises(OutsideIntendedUse) as caught:
        make_analyzer(backends).analyze(StudyRequest(instances, pipeline="cxr_pneumonia_ensemble"))
    reason = caught.value.reason
    assert "outside intended use: patient age outside 1-5 years" in reason
    assert str(int(age)) not in reason.replace("1-5", "")  # the age itself is never quoted
    assert caught.value.code.name == "FAILED_PRECONDITION"
    assert backends.preprocessor.calls == [] and backends.inference.calls == []


def test_an_unknown_age_is_refused_where_the_pipeline_says_so(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1, "CR", "CHEST", age=None)
    backends = Backends(FakeDecoder(attributes))
    with pytest.raises(OutsideIntendedUse, match="patient age unknown"):
        make_analyzer(backends).analyze(StudyRequest(instances, pipeline="cxr_pneumonia_ensemble"))


def test_a_pipeline_that_flags_hands_the_caveats_to_postprocessing(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(2, "CR", "CHEST")
    adult = instances[1]
    attributes[adult] = dataclasses.replace(attributes[adult], patient_age_years=64.0)
    backends = Backends(FakeDecoder(attributes))
    make_analyzer(backends).analyze(StudyRequest(instances))  # routed to cxr_pneumonia
    ((call, _),) = backends.postprocessor.calls
    (caveat,) = call.caveats
    assert caveat.sop_instance_uid == attributes[adult].sop_instance_uid
    assert caveat.reason is CaveatReason.OUTSIDE_INTENDED_USE
    assert len(backends.inference.calls) == 1  # flagged images are still analysed


def test_a_volume_pipeline_reports_one_caveat_per_kind_for_the_series(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(4, "MR", "HEAD", age=9.0)
    backends = Backends(FakeDecoder(attributes))
    make_analyzer(backends).analyze(StudyRequest(instances))
    ((call, _),) = backends.postprocessor.calls
    assert [c.sop_instance_uid for c in call.caveats] == [SERIES_UID]
    assert isinstance(call.caveats[0], Caveat)


# --- result documents --------------------------------------------------------------------------


def test_documents_are_built_from_the_heatmaps_the_caller_did_not_ask_to_see(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1)
    backends = Backends(FakeDecoder(attributes))
    options = OutputOptions(dicom_sr=True, dicom_heatmap=True)
    result = make_analyzer(backends).analyze(StudyRequest(instances, options=options))
    assert backends.postprocessor.calls[0][0].heatmaps is True  # the capture needs them
    (built,) = backends.reporter.built
    assert built.assessment.findings[0].heatmap_png == b"PNG"
    assert result.assessment.findings[0].heatmap_png == b""  # not asked for in the answer
    assert [o.name for o in result.outputs] == ["sr"]
    assert "report" in result.timings_ms


def test_the_requests_uid_seed_reaches_the_report_builder(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1, "CR", "CHEST", age=64.0)
    backends = Backends(FakeDecoder(attributes))
    analyzer = make_analyzer(backends)
    options = OutputOptions(dicom_sr=True, report_refusal=True)
    analyzer.analyze(StudyRequest(instances, options=options, uid_seed="acc-1"))
    named = "cxr_pneumonia_ensemble"  # refuses the adult: the refusal report gets it too
    analyzer.analyze(StudyRequest(instances, pipeline=named, options=options, uid_seed="acc-2"))
    analyzer.analyze(StudyRequest(instances, options=options))
    assert backends.reporter.seeds == ["acc-1", "acc-2", ""]


def test_no_documents_no_report_stage(make_analyzer: Callable[..., Analyzer]) -> None:
    instances, attributes = study(1)
    backends = Backends(FakeDecoder(attributes))
    result = make_analyzer(backends).analyze(StudyRequest(instances))
    assert backends.reporter.built == [] and result.outputs == []
    assert "report" not in result.timings_ms


def test_a_segmentation_document_asks_the_postprocessor_for_masks(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(3, "MR", "HEAD")
    backends = Backends(FakeDecoder(attributes))
    make_analyzer(backends).analyze(StudyRequest(instances, options=OutputOptions(dicom_seg=True)))
    assert backends.postprocessor.calls[0][0].masks is True


def test_a_refusal_is_an_answer_with_its_report_only_when_asked(
    make_analyzer: Callable[..., Analyzer],
) -> None:
    instances, attributes = study(1, "CR", "CHEST", age=64.0)
    backends = Backends(FakeDecoder(attributes))
    analyzer = make_analyzer(backends)
    named = "cxr_pneumonia_ensemble"
    with pytest.raises(OutsideIntendedUse):
        analyzer.analyze(
            StudyRequest(instances, pipeline=named, options=OutputOptions(dicom_sr=True))
        )
    options = OutputOptions(dicom_sr=True, report_refusal=True)
    result = analyzer.analyze(StudyRequest(instances, pipeline=named, options=options))
    assert result.refusal is not None and result.refusal.kind == "OUTSIDE_INTENDED_USE"
    assert "patient age outside 1-5 years" in result.refusal.reason
    assert result.assessment.findings == [] and [o.name for o in result.outputs] == ["refusal-sr"]
    assert backends.reporter.refused == [(named, result.refusal.reason)]
    assert backends.inference.calls == []
