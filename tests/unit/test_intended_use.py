"""Intended use as machine-checked constraints: every constraint, both policies, unknown age,
the findings they make INDETERMINATE, and the age read from the DICOM header."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from services.common.images import ImageAttributes
from services.common.jobs import PostprocessJob
from services.common.pipelines import IntendedUse, PipelineRegistry, Range
from services.common.results import Caveat, CaveatReason, FindingStatus, TriagePriority
from services.decoder.attributes import patient_age_years
from services.decoder.header import CheckedHeader
from services.postprocessor.core import assess

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
CHILD = ImageAttributes(
    sop_instance_uid="1.2.3",
    modality="CR",
    view_position="PA",
    photometric_interpretation="MONOCHROME2",
    presentation_intent_type="FOR PRESENTATION",
    pixel_spacing=(0.15, 0.15),
    patient_age_years=4.0,
)
STRICT = IntendedUse(
    population="children aged 1-5",
    age_years=Range(min=1, max=5),
    age_unknown="refuse",
    presentation_intent_type=["FOR PRESENTATION"],
    view_position=["PA", "AP"],
    photometric_interpretation=["MONOCHROME2"],
    pixel_spacing_mm=Range(min=0.1, max=0.2),
    min_matrix=256,
    outside="refuse",
)


def test_an_image_inside_every_constraint_has_no_caveats() -> None:
    assert STRICT.judge(CHILD, 1024, 1024) == ([], False)


@pytest.mark.parametrize(
    ("change", "rows", "expected", "reason"),
    [
        ({"patient_age_years": 64.0}, 1024, "patient age outside 1-5 years", None),
        ({"patient_age_years": 0.4}, 1024, "patient age outside 1-5 years", None),
        ({"patient_age_years": None}, 1024, "patient age unknown (intended 1-5 years)", None),
        ({"presentation_intent_type": "FOR PROCESSING"}, 1024, "PresentationIntentType is", None),
        ({"view_position": "LL"}, 1024, "ViewPosition is 'LL', intended one of", None),
        ({"photometric_interpretation": "RGB"}, 1024, "PhotometricInterpretation is", None),
        ({"pixel_spacing": (0.5, 0.5)}, 1024, "pixel spacing 0.5 x 0.5 mm, intended", None),
        ({"pixel_spacing": None}, 1024, "pixel spacing unknown", None),
        ({}, 28, "28 x 28 pixels, below the 256", CaveatReason.IMAGE_QUALITY),
    ],
)
def test_each_constraint_outside_gives_its_caveat(
    change: dict[str, object], rows: int, expected: str, reason: CaveatReason | None
) -> None:
    attrs = dataclasses.replace(CHILD, **change)  # type: ignore[arg-type]
    caveats, refuse = STRICT.judge(attrs, rows, rows)
    (caveat,) = caveats
    assert caveat.detail.startswith("outside intended use: ")
    assert expected in caveat.detail
    assert caveat.reason is (reason or CaveatReason.OUTSIDE_INTENDED_USE)
    assert caveat.sop_instance_uid == "1.2.3"
    assert refuse
    flagging = STRICT.model_copy(update={"outside": "flag", "age_unknown": "flag"})
    assert flagging.judge(attrs, rows, rows) == (caveats, False)


def test_the_age_is_never_quoted() -> None:
    for age in (64.25, 0.4, 17.0):
        (caveat,), _ = STRICT.judge(dataclasses.replace(CHILD, patient_age_years=age), 512, 512)
        assert str(age) not in caveat.detail and str(int(age)) not in caveat.detail.replace(
            "1-5", ""
        )
    assert "patient_age_years" not in repr(CHILD)


def test_unknown_age_follows_its_own_policy() -> None:
    unknown = dataclasses.replace(CHILD, patient_age_years=None)
    accept = STRICT.model_copy(update={"age_unknown": "accept"})
    assert accept.judge(unknown, 1024, 1024) == ([], False)
    flag = STRICT.model_copy(update={"age_unknown": "flag"})  # outside still refuses
    caveats, refuse = flag.judge(unknown, 1024, 1024)
    assert len(caveats) == 1 and not refuse
    caveats, refuse = flag.judge(dataclasses.replace(unknown, view_position="LL"), 1024, 1024)
    assert len(caveats) == 2 and refuse


def test_open_ranges_and_bad_ranges() -> None:
    assert Range(min=18).holds(90) and not Range(min=18).holds(17.9)
    assert Range(max=5).describe("years") == "at most 5 years"
    with pytest.raises(ValidationError, match="above max"):
        Range(min=5, max=1)
    with pytest.raises(ValidationError):
        IntendedUse(population="x", outside="ignore")  # type: ignore[arg-type]


def test_every_shipped_pipeline_declares_its_intended_use() -> None:
    registry = PipelineRegistry.load(PIPELINES)
    for pipeline in registry.all():
        assert pipeline.intended_use is not None, pipeline.name
        assert pipeline.intended_use.population
    chest = registry.get("cxr_pneumonia").intended_use
    assert chest is not None and chest.age_years == Range(min=1, max=5)


# --- findings with an honest status -----------------------------------------------------------


def _chest_outputs(logits: list[float], ood: list[float] | None = None) -> dict[str, np.ndarray]:
    outputs = {"logits": np.asarray(logits, np.float32).reshape(-1, 1)}
    if ood is not None:
        outputs["ood"] = np.asarray(ood, np.float32).reshape(-1, 1)
    return outputs


def test_an_indeterminate_finding_never_raises_the_priority() -> None:
    pipeline = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia")
    flagged = Caveat(CaveatReason.OUTSIDE_INTENDED_USE, "outside intended use: age", "adult")
    job = PostprocessJob(
        pipeline.name,
        _chest_outputs([6.0, -6.0], ood=[0.0, 0.0]),
        ("adult", "child"),
        caveats=(flagged,),
    )
    assessment = assess(job, pipeline)
    adult, child = assessment.findings
    assert adult.probability > 0.99 and adult.status is FindingStatus.INDETERMINATE
    assert not adult.positive and adult.caveats == (flagged,)
    assert child.status is FindingStatus.NEGATIVE and not child.caveats
    assert assessment.triage_priority is TriagePriority.ROUTINE
    assert assessment.caveats == [flagged]
    unflagged = assess(dataclasses.replace(job, caveats=()), pipeline)
    assert unflagged.findings[0].status is FindingStatus.POSITIVE
    assert unflagged.triage_priority is TriagePriority.URGENT


def test_an_out_of_distribution_score_above_threshold_makes_the_finding_indeterminate() -> None:
    from services.common.pipelines import OodRule

    base = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia")
    rules = base.postprocess.model_copy(
        update={"ood": OodRule(output="ood", threshold=10.0, acceptance=0.95)}
    )
    model = base.model.model_copy(update={"outputs": [*base.model.outputs, "ood"]})
    pipeline = base.model_copy(update={"postprocess": rules, "model": model})
    outputs = _chest_outputs([6.0, 6.0], ood=[3.0, 40.0])
    assessment = assess(PostprocessJob(pipeline.name, outputs, ("in", "out")), pipeline)
    inside, outside = assessment.findings
    assert inside.status is FindingStatus.POSITIVE and inside.ood_score == pytest.approx(3.0)
    assert outside.status is FindingStatus.INDETERMINATE
    (caveat,) = outside.caveats
    assert (
        caveat.reason is CaveatReason.OUT_OF_DISTRIBUTION and "above its threshold" in caveat.detail
    )
    assert outside.ood_threshold == 10.0
    assert assessment.triage_priority is TriagePriority.URGENT  # from the in-distribution one


# --- the age, read from the header -----------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "years"),
    [
        ({"PatientAge": "064Y"}, 64.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "052W"}, 52 * 7 / 365.25),
        ({"PatientAge": "010D"}, 10 / 365.25),
        ({"PatientBirthDate": "19400101", "StudyDate": "20040101"}, 64.0),
        ({"PatientAge": "64"}, None),  # not an AS value
        ({"PatientBirthDate": "20050101", "StudyDate": "20040101"}, None),  # born after
        ({"PatientBirthDate": "19401301", "StudyDate": "20040101"}, None),  # month 13
        ({}, None),
    ],
)
def test_patient_age_from_the_header(elements: dict[str, str], years: float | None) -> None:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    age = patient_age_years(CheckedHeader(ds))
    assert (age is None) == (years is None)
    if years is not None:
        assert age == pytest.approx(years, abs=0.01)


def test_decisions_are_counted_per_model_version_and_status() -> None:
    from prometheus_client import REGISTRY

    from services.postprocessor import monitoring

    pipeline = PipelineRegistry.load(PIPELINES).get("cxr_pneumonia")
    labels = {"model": "cxr_pneumonia", "version": pipeline.model.version}

    def count(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, labels | extra) or 0.0

    finding = {"finding": "233604007"}
    before = [count("imaging_model_decisions_total", **finding, status=s) for s in FindingStatus]
    images = count("imaging_model_images_total")
    flagged = Caveat(CaveatReason.OUTSIDE_INTENDED_USE, "outside intended use: age", "b")
    outputs = _chest_outputs([6.0, 6.0, -6.0], ood=[0.0, 0.0, 0.0])
    job = PostprocessJob(pipeline.name, outputs, ("a", "b", "c"), caveats=(flagged,))
    monitoring.record(pipeline, assess(job, pipeline))
    after = [count("imaging_model_decisions_total", **finding, status=s) for s in FindingStatus]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]  # POS, NEG, INDET
    assert count("imaging_model_images_total") == images + 3


def test_the_rates_the_cards_state_are_declared_for_every_served_model() -> None:
    from prometheus_client import REGISTRY

    from services.postprocessor import monitoring

    registry = PipelineRegistry.load(PIPELINES)
    monitoring.declare(registry.all())
    chest = registry.get("cxr_pneumonia")
    labels = {"model": "cxr_pneumonia", "version": chest.model.version}
    rule, ood = chest.postprocess.findings[0], chest.postprocess.ood
    assert ood is not None and rule.expected_positive_rate is not None
    expected = "imaging_model_expected_rate"
    positive = REGISTRY.get_sample_value(expected, labels | {"kind": "positive"})
    assert positive == pytest.approx(rule.expected_positive_rate)
    assert REGISTRY.get_sample_value(expected, labels | {"kind": "ood"}) == pytest.approx(
        1 - ood.acceptance
    )
