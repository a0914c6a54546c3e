"""Routing with a way out: a named pipeline overrides the routing tags (BodyPartExamined,
ViewPosition) but never Modality or SOPClassUID, its intended use is still judged, and the
override is audited and warned about; site BodyPartExamined values map to defined terms."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from services.cli.audit_verify import verify
from services.common.audit import AuditEvent, AuditKey, AuditLog
from services.common.errors import NoMatchingPipeline, OutsideIntendedUse
from services.common.images import DecodedImage, Geometry, ImageAttributes, Preprocessed
from services.common.jobs import PostprocessJob
from services.common.pipelines import (
    ROUTING_ONLY_TAGS,
    BodyPartAliases,
    Pipeline,
    PipelineRegistry,
)
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    StudyRequest,
    StudyResult,
    TriagePriority,
)
from services.common.settings import GatewaySettings
from services.gateway import auditing
from services.gateway.auditing import CallFacts
from services.gateway.core import Limits, StudyAnalyzer

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
SITE_ALIASES = {"THORAX": "CHEST", "Lung": "CHEST", "BRST": "BREAST"}


@pytest.fixture(scope="module")
def registry() -> PipelineRegistry:
    return PipelineRegistry.load(PIPELINES)


def _us(body_part: str = "", age: float | None = 45.0) -> ImageAttributes:
    return ImageAttributes(
        sop_instance_uid="1.2.3.1",
        study_instance_uid="1.2.3",
        modality="US",
        body_part_examined=body_part,
        patient_age_years=age,
    )


# --- which tags a name overrides ---------------------------------------------------------------


def test_only_body_part_and_view_position_are_routing_conveniences() -> None:
    assert {"BodyPartExamined", "ViewPosition"} == ROUTING_ONLY_TAGS


def test_an_empty_body_part_is_refused_by_routing_and_overridden_by_a_name(
    registry: PipelineRegistry,
) -> None:
    with pytest.raises(NoMatchingPipeline, match="us_breast: BodyPartExamined is empty"):
        registry.route([_us()])
    us_breast = registry.get("us_breast")
    assert registry.override(us_breast, [_us()]) == ["BodyPartExamined"]
    assert registry.check(us_breast, [_us()]) is us_breast
    assert registry.override(us_breast, [_us("BREAST")]) == []


def test_a_name_never_overrides_modality(registry: PipelineRegistry) -> None:
    chest = ImageAttributes(modality="CT", body_part_examined="")
    with pytest.raises(NoMatchingPipeline) as refused:
        registry.override(registry.get("cxr_pneumonia"), [chest])
    reason = refused.value.reason
    assert "Modality is 'CT'" in reason
    assert "BodyPartExamined" in reason  # named as the only tags a name overrides
    assert "BodyPartExamined is" not in reason  # but not listed as a problem


def _custom(**match: list[str]) -> Pipeline:
    spec = yaml.safe_load((PIPELINES / "cxr_pneumonia.yaml").read_text())
    spec["name"] = "cxr_custom"
    spec["match"] = {**spec["match"], **match}
    return Pipeline.model_validate(spec)


def test_a_name_overrides_view_position_but_not_the_sop_class() -> None:
    pipeline = _custom(view_position=["PA"], sop_class_uid=["1.2.840.10008.5.1.4.1.1.1"])
    registry = PipelineRegistry([pipeline])
    lateral = ImageAttributes(
        modality="CR",
        body_part_examined="",
        view_position="LL",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
    )
    assert registry.override(pipeline, [lateral]) == ["BodyPartExamined", "ViewPosition"]
    capture = ImageAttributes(
        modality="CR", body_part_examined="CHEST", sop_class_uid="1.2.840.10008.5.1.4.1.1.7"
    )
    with pytest.raises(
        NoMatchingPipeline, match=re.escape("SOPClassUID is '1.2.840.10008.5.1.4.1.1.7'")
    ):
        registry.override(pipeline, [capture])


def test_override_lists_the_tags_of_every_image_once(registry: PipelineRegistry) -> None:
    images = [_us(), _us("ABDOMEN"), _us("BREAST")]
    assert registry.override(registry.get("us_breast"), images) == ["BodyPartExamined"]


# --- body part aliases -------------------------------------------------------------------------


def test_site_values_route_once_mapped_to_their_defined_terms(registry: PipelineRegistry) -> None:
    thorax = ImageAttributes(modality="CR", body_part_examined="THORAX")
    with pytest.raises(NoMatchingPipeline, match="BodyPartExamined is 'THORAX'"):
        registry.route([thorax])
    mapped = PipelineRegistry(registry.all(), BodyPartAliases(SITE_ALIASES))
    assert mapped.route([thorax]).name == "cxr_pneumonia"
    assert mapped.route([ImageAttributes(modality="CR", body_part_examined="lung ")]).name == (
        "cxr_pneumonia"
    )
    assert mapped.route([_us("BRST")]).name == "us_breast"
    # A mapped value needs no override when the pipeline is named either.
    assert mapped.override(mapped.get("us_breast"), [_us("brst")]) == []
    # Nothing else changes: an unmapped value is refused as before, the empty one too.
    with pytest.raises(NoMatchingPipeline, match="BodyPartExamined is 'KNEE'"):
        mapped.route([ImageAttributes(modality="CR", body_part_examined="KNEE")])
    with pytest.raises(NoMatchingPipeline, match="BodyPartExamined is empty"):
        mapped.route([_us()])


def test_aliases_replace_only_the_body_part() -> None:
    original = _us("Brst", age=30.0)
    mapped = BodyPartAliases({"BRST": "BREAST"}).apply(original)
    assert mapped.body_part_examined == "BREAST"
    assert mapped.patient_age_years == 30.0 and mapped.modality == "US"
    assert BodyPartAliases({"BRST": "BREAST"}).apply(_us("ABDOMEN")).body_part_examined == (
        "ABDOMEN"
    )
    assert not BodyPartAliases() and BodyPartAliases({"BRST": "BREAST"})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"THORAX": "chest"}, "defined term 'chest' is not a DICOM Code String"),
        ({"THORAX": "C" * 17}, "is not a DICOM Code String"),
        ({"THORAX": "CHEST-WALL"}, "defined term 'CHEST-WALL' is not"),
        ({"THO\u00c9RAX": "CHEST"}, "value 'THOÉRAX' is not a DICOM Code String"),
        ({"X" * 17: "CHEST"}, "is not a DICOM Code String"),
        ({" ": "CHEST"}, "an empty BodyPartExamined cannot be mapped"),
        ({"thorax": "CHEST", "THORAX": "CHEST"}, "'THORAX' is mapped twice"),
        ({"LUNG": "THORAX", "THORAX": "CHEST"}, "'LUNG' maps to 'THORAX', which is itself mapped"),
    ],
    ids=["lower-case", "17 chars", "hyphen", "non-ascii", "long key", "empty", "twice", "chain"],
)
def test_a_mapping_outside_the_code_string_rules_is_refused(
    mapping: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BodyPartAliases(mapping)


def test_the_gateway_refuses_to_start_on_a_bad_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGING_BODY_PART_ALIASES", json.dumps({"THORAX": "chest"}))
    with pytest.raises(ValidationError, match="is not a DICOM Code String"):
        GatewaySettings()
    monkeypatch.setenv("IMAGING_BODY_PART_ALIASES", json.dumps(SITE_ALIASES))
    settings = GatewaySettings()
    assert settings.body_part_aliases == {"THORAX": "CHEST", "LUNG": "CHEST", "BRST": "BREAST"}
    assert settings.body_parts().apply(_us("lung")).body_part_examined == "CHEST"
    monkeypatch.delenv("IMAGING_BODY_PART_ALIASES")
    assert not GatewaySettings().body_parts()


# --- the gateway: warning, audit, intended use -------------------------------------------------


class _Decoder:
    def __init__(self, attributes: ImageAttributes) -> None:
        self.attributes = attributes

    async def decode(self, dicom: bytes, request_id: str) -> DecodedImage:
        return DecodedImage(np.zeros((1, 64, 64, 1), np.uint8), self.attributes)


class _Preprocessor:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def preprocess(
        self, pipeline: str, images: Sequence[Any], request_id: str
    ) -> Preprocessed:
        self.calls.append(pipeline)
        return Preprocessed(
            np.zeros((len(images), 1, 28, 28), np.float32),
            [Geometry(64, 64, 0, 0, 64, 64) for _ in images],
        )


class _Inference:
    async def infer(self, model: str, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        return {}


class _Postprocessor:
    def __init__(self) -> None:
        self.caveats: list[Caveat] = []

    async def postprocess(self, job: PostprocessJob, request_id: str) -> Assessment:
        self.caveats = list(job.caveats)
        return Assessment([], TriagePriority.ROUTINE)


def _analyze(
    registry: PipelineRegistry, attributes: ImageAttributes, pipeline: str = ""
) -> tuple[StudyResult | Exception, CallFacts, _Preprocessor, _Postprocessor]:
    """One study through a StudyAnalyzer with fake peers, and what it noted for the audit."""
    preprocessor, postprocessor = _Preprocessor(), _Postprocessor()
    analyzer = StudyAnalyzer(
        registry,
        _Decoder(attributes),
        preprocessor,
        _Inference(),
        postprocessor,
        Limits(max_instances=4, max_study_bytes=1000, max_decoded_bytes=2**31),
        fan_out=8,
    )
    facts = CallFacts()

    async def run() -> StudyResult:
        auditing._current.set(facts)
        return await analyzer.analyze(StudyRequest([b"dicom"], pipeline=pipeline))

    try:
        outcome: StudyResult | Exception = asyncio.run(run())
    except (NoMatchingPipeline, OutsideIntendedUse) as refused:
        outcome = refused
    return outcome, facts, preprocessor, postprocessor


def test_without_a_name_an_empty_body_part_is_refused_before_preprocessing(
    registry: PipelineRegistry,
) -> None:
    outcome, facts, preprocessor, _ = _analyze(registry, _us())
    assert isinstance(outcome, NoMatchingPipeline)
    assert not facts.pipeline_named and facts.routing_overridden == []
    assert preprocessor.calls == []


def test_a_named_pipeline_overrides_the_body_part_warns_and_is_audited(
    registry: PipelineRegistry,
) -> None:
    outcome, facts, preprocessor, postprocessor = _analyze(
        registry, _us("ABDOMEN", age=None), "us_breast"
    )
    assert isinstance(outcome, StudyResult)
    assert outcome.pipeline == "us_breast" and preprocessor.calls == ["us_breast"]
    (warning,) = [w for w in outcome.warnings if "named by the caller" in w]
    assert "BodyPartExamined" in warning and "ABDOMEN" not in warning
    assert facts.pipeline_named and facts.routing_overridden == ["BodyPartExamined"]
    assert facts.pipeline == "us_breast"
    # The intended use is judged as for a routed study: an unknown age is flagged.
    assert [c.reason for c in postprocessor.caveats] == [CaveatReason.OUTSIDE_INTENDED_USE]
    assert "patient age unknown" in postprocessor.caveats[0].detail


def test_a_named_pipeline_that_matches_warns_of_nothing(registry: PipelineRegistry) -> None:
    outcome, facts, _, _ = _analyze(registry, _us("BREAST"), "us_breast")
    assert isinstance(outcome, StudyResult)
    assert not [w for w in outcome.warnings if "named by the caller" in w]
    assert facts.pipeline_named and facts.routing_overridden == []


def test_an_override_still_meets_a_refusing_intended_use(registry: PipelineRegistry) -> None:
    # The ensemble refuses studies outside its intended use (children aged 1-5); naming it
    # for an adult's radiograph without BodyPartExamined is refused there, and audited.
    adult = ImageAttributes(
        sop_instance_uid="1.2.3.1",
        modality="CR",
        view_position="PA",
        photometric_interpretation="MONOCHROME1",
        patient_age_years=40.0,
    )
    outcome, facts, preprocessor, _ = _analyze(registry, adult, "cxr_pneumonia_ensemble")
    assert isinstance(outcome, OutsideIntendedUse)
    assert "patient age outside" in outcome.reason
    assert facts.pipeline_named and facts.routing_overridden == ["BodyPartExamined"]
    assert preprocessor.calls == []


def test_the_audit_record_carries_the_override_and_still_verifies(tmp_path: Path) -> None:
    key = AuditKey(b"k" * 40)
    path = tmp_path / "audit.jsonl"
    common: dict[str, Any] = dict(
        client="",
        peer="ipv4:127.0.0.1:1",
        method="Analyze",
        pipeline="us_breast",
        model_name="us_breast",
        model_version="1",
        instance_sha256=(),
        study_uid="1.2.3",
        findings=(),
        status="OK",
        latency_ms=1.0,
    )
    with AuditLog(path, key, "gw") as log:
        log.record(AuditEvent(request_id="routed", **common))
        log.record(
            AuditEvent(
                request_id="named",
                pipeline_named=True,
                routing_overridden=("BodyPartExamined",),
                **common,
            )
        )
    routed, named = (json.loads(line) for line in path.read_text().splitlines())
    assert (routed["pipeline_named"], routed["routing_overridden"]) == (False, [])
    assert (named["pipeline_named"], named["routing_overridden"]) == (True, ["BodyPartExamined"])
    assert verify(path, key) == []
