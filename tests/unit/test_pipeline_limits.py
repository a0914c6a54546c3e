"""Per-pipeline study limits (a spec's ``limits``) under the gateway's global ones, which stay
the ceiling: the tighter applies once the study's pipeline is known (services/gateway/core.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from services.common.errors import TooLarge
from services.common.images import DecodedImage, Geometry, ImageAttributes, Preprocessed
from services.common.jobs import PostprocessJob
from services.common.pipelines import Pipeline, PipelineRegistry, StudyLimits
from services.common.results import Assessment, StudyRequest, StudyResult, TriagePriority
from services.common.settings import GatewaySettings
from services.gateway.core import InstanceAssembler, Limits, StudyAnalyzer

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
MiB = 2**20
CHEST = ImageAttributes(
    sop_instance_uid="1.2.3.1",
    study_instance_uid="1.2.3",
    modality="CR",
    body_part_examined="CHEST",
    view_position="PA",
    photometric_interpretation="MONOCHROME2",
    patient_age_years=3.0,
)


@pytest.fixture(scope="module")
def registry() -> PipelineRegistry:
    return PipelineRegistry.load(PIPELINES)


def _spec(**limits: object) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["limits"] = limits
    return spec


# --- the spec --------------------------------------------------------------------------------


def test_the_shipped_pipelines_set_their_limits(registry: PipelineRegistry) -> None:
    limits = {p.name: (p.limits.max_instances, p.limits.max_study_bytes) for p in registry.all()}
    assert limits == {
        "cxr_pneumonia": (64, 256 * MiB),
        "cxr_pneumonia_ensemble": (64, 256 * MiB),
        "us_breast": (64, 256 * MiB),
        "mri_brain_extraction": (512, 1024 * MiB),
    }


def test_limits_are_optional_positive_and_closed() -> None:
    spec = _spec()
    del spec["limits"]
    assert Pipeline.model_validate(spec).limits == StudyLimits()
    assert Pipeline.model_validate(_spec(max_instances=4)).limits.max_study_bytes is None
    for bad in ({"max_instances": 0}, {"max_study_bytes": -1}, {"max_series": 2}):
        with pytest.raises(ValidationError):
            Pipeline.model_validate(_spec(**bad))


def test_the_gateway_default_fits_a_chest_ct() -> None:
    assert GatewaySettings.model_fields["max_instances"].default == 2048


# --- the tighter of the two ------------------------------------------------------------------


def test_a_pipeline_lowers_the_gateways_limits_but_never_raises_them(
    registry: PipelineRegistry,
) -> None:
    gateway = Limits(2048, 1024 * MiB, 2**31)
    chest = gateway.of(registry.get("cxr_pneumonia"))
    assert (chest.max_instances, chest.max_study_bytes) == (64, 256 * MiB)
    assert (chest.instances_set_by, chest.bytes_set_by) == ("cxr_pneumonia", "cxr_pneumonia")
    assert chest.max_decoded_bytes == gateway.max_decoded_bytes
    tight = Limits(10, 100 * MiB, 2**31)
    assert tight.of(registry.get("cxr_pneumonia")) == tight  # the gateway's are the ceiling
    mixed = Limits(10, 1024 * MiB, 2**31).of(registry.get("mri_brain_extraction"))
    assert (mixed.max_instances, mixed.instances_set_by) == (10, "")
    assert (mixed.max_study_bytes, mixed.bytes_set_by) == (1024 * MiB, "")


def test_the_reason_names_the_pipeline_and_its_limit(registry: PipelineRegistry) -> None:
    limits = Limits(2048, 1024 * MiB, 2**31).of(registry.get("us_breast"))
    with pytest.raises(TooLarge) as caught:
        limits.check_instances(65)
    assert caught.value.reason == (
        "study has 65 instances; the limit is 64 (pipeline 'us_breast': its limits.max_instances)"
    )
    with pytest.raises(TooLarge, match=r"pipeline 'us_breast': its limits.max_study_bytes"):
        limits.check_bytes(256 * MiB + 1)
    with pytest.raises(TooLarge) as caught:
        Limits(4, 100, 2**31).check_instances(5)
    assert caught.value.reason == "study has 5 instances; the limit is 4"


def test_a_named_pipelines_limits_apply_while_receiving(registry: PipelineRegistry) -> None:
    analyzer = _analyzer(registry, Limits(2048, 1024 * MiB, 2**31))
    named = analyzer.receiving_limits(StudyRequest([], pipeline="cxr_pneumonia"))
    assert named.max_instances == 64
    assert analyzer.receiving_limits(StudyRequest([])) == analyzer.limits
    assembler = InstanceAssembler(named)
    for index in range(64):
        assembler.add(index, b"x")
    with pytest.raises(TooLarge, match="pipeline 'cxr_pneumonia'"):
        assembler.add(64, b"x")


# --- the gateway's core ----------------------------------------------------------------------


class _Decoder:
    def __init__(self) -> None:
        self.calls = 0

    async def decode(self, dicom: bytes, request_id: str) -> DecodedImage:
        self.calls += 1
        return DecodedImage(np.zeros((1, 64, 64, 1), np.uint8), CHEST)


class _Preprocessor:
    def __init__(self) -> None:
        self.calls = 0

    async def preprocess(
        self, pipeline: str, images: Sequence[Any], request_id: str
    ) -> Preprocessed:
        self.calls += 1
        return Preprocessed(
            np.zeros((len(images), 1, 28, 28), np.float32),
            [Geometry(64, 64, 0, 0, 64, 64) for _ in images],
        )


class _Inference:
    async def infer(self, model: str, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        return {}


class _Postprocessor:
    async def postprocess(self, job: PostprocessJob, request_id: str) -> Assessment:
        return Assessment([], TriagePriority.ROUTINE)


def _analyzer(registry: PipelineRegistry, limits: Limits) -> StudyAnalyzer:
    return StudyAnalyzer(
        registry, _Decoder(), _Preprocessor(), _Inference(), _Postprocessor(), limits, fan_out=4
    )


def _run(analyzer: StudyAnalyzer, request: StudyRequest) -> StudyResult:
    return asyncio.run(analyzer.analyze(request))


def test_a_routed_study_over_its_pipelines_limit_is_refused_before_preprocessing(
    registry: PipelineRegistry,
) -> None:
    analyzer = _analyzer(registry, Limits(2048, 1024 * MiB, 2**31))
    with pytest.raises(TooLarge, match=r"the limit is 64 \(pipeline 'cxr_pneumonia'"):
        _run(analyzer, StudyRequest([b"dicom"] * 65))
    assert analyzer._decoder.calls == 65  # type: ignore[attr-defined]  # routing needs them
    assert analyzer._preprocessor.calls == 0  # type: ignore[attr-defined]
    assert _run(analyzer, StudyRequest([b"dicom"] * 64)).pipeline == "cxr_pneumonia"


def test_a_named_study_over_its_pipelines_limit_is_refused_before_decoding(
    registry: PipelineRegistry,
) -> None:
    analyzer = _analyzer(registry, Limits(2048, 1024 * MiB, 2**31))
    with pytest.raises(TooLarge, match="pipeline 'cxr_pneumonia_ensemble'"):
        _run(analyzer, StudyRequest([b"dicom"] * 65, pipeline="cxr_pneumonia_ensemble"))
    assert analyzer._decoder.calls == 0  # type: ignore[attr-defined]


def test_the_gateways_limit_is_checked_first_and_says_so(registry: PipelineRegistry) -> None:
    analyzer = _analyzer(registry, Limits(8, 1024 * MiB, 2**31))
    with pytest.raises(TooLarge) as caught:
        _run(analyzer, StudyRequest([b"dicom"] * 9))
    assert caught.value.reason == "study has 9 instances; the limit is 8"
    assert analyzer._decoder.calls == 0  # type: ignore[attr-defined]
