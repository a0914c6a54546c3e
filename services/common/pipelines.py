"""Declarative pipeline specs (YAML validated by pydantic) and routing of studies to them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import NoMatchingPipeline, NotFound, quote_prefix
from services.common.grids import VolumeIssue
from services.common.images import ImageAttributes
from services.common.results import Caveat, CaveatReason, CodedConcept, TriagePriority

# What a pipeline may be called: the specs' ``name`` and every name a caller asks for. A name
# outside it is unknown without a lookup, and only a short prefix of it is ever quoted.
PIPELINE_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
_PIPELINE_NAME = re.compile(PIPELINE_NAME)


def is_pipeline_name(name: str) -> bool:
    """Whether ``name`` could name a pipeline (lower-case letters, digits, ``_`` and ``-``,
    at most 64 characters)."""
    return _PIPELINE_NAME.fullmatch(name) is not None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Match tags that only choose a pipeline for a study, and which a caller who names the
# pipeline overrides (audited, and warned about in the answer). BodyPartExamined is Type 3 in
# the General Series module (PS3.3 C.7.3.1.1) and its values are site-specific in practice
# (THORAX, LUNG, or nothing at all); ViewPosition (PS3.3 C.8.11.5) is often empty too, and
# where the view matters to the model IntendedUse.view_position checks it whatever the route.
# Modality (Type 1) and SOPClassUID say what kind of image the pixels are: a CT is never sent
# to a radiograph model, named or not, so those two are never overridden.
ROUTING_ONLY_TAGS = frozenset({"BodyPartExamined", "ViewPosition"})


class Match(_Spec):
    """Which instances a pipeline accepts; an empty list accepts any value."""

    modality: list[str] = []
    body_part_examined: list[str] = []
    sop_class_uid: list[str] = []
    view_position: list[str] = []

    def mismatches(self, attrs: ImageAttributes) -> list[str]:
        """Reasons ``attrs`` is rejected, empty when accepted.

        Values reach here checked against their VR by the decoder; one that failed is absent
        and named "invalid", never quoted (it may hold bytes of other elements)."""
        return [reason for _, reason in self.rejections(attrs)]

    def mismatched_tags(self, attrs: ImageAttributes) -> list[str]:
        """Keywords of the tags that reject ``attrs`` (never their values)."""
        return [tag for tag, _ in self.rejections(attrs)]

    def rejections(self, attrs: ImageAttributes) -> list[tuple[str, str]]:
        """(keyword, reason) of each tag that rejects ``attrs``."""
        wanted = {
            "Modality": (self.modality, attrs.modality),
            "BodyPartExamined": (self.body_part_examined, attrs.body_part_examined),
            "SOPClassUID": (self.sop_class_uid, attrs.sop_class_uid),
            "ViewPosition": (self.view_position, attrs.view_position),
        }
        return [
            (tag, f"{tag} is {_shown(tag, value, attrs)}, wants one of {allowed}")
            for tag, (allowed, value) in wanted.items()
            if allowed and value.upper() not in {a.upper() for a in allowed}
        ]

    def describe(self) -> str:
        parts = [
            f"{tag} in {values}"
            for tag, values in (
                ("Modality", self.modality),
                ("BodyPartExamined", self.body_part_examined),
                ("SOPClassUID", self.sop_class_uid),
                ("ViewPosition", self.view_position),
            )
            if values
        ]
        return "; ".join(parts) or "any image"


def _shown(keyword: str, value: str, attrs: ImageAttributes) -> str:
    if keyword in attrs.invalid:
        return f"invalid (its {keyword} value fails the DICOM rules for its type)"
    return repr(value) if value else "empty"


# A Code String (PS3.5 6.2, VR CS): upper-case letters, digits, space and underscore, at most
# 16 characters; leading and trailing spaces are padding, so a value neither starts nor ends
# with one.
_CODE_STRING = re.compile(r"[A-Z0-9_](?:[A-Z0-9_ ]{0,14}[A-Z0-9_])?")


class BodyPartAliases:
    """Site-specific BodyPartExamined values -> the defined terms routing expects
    (IMAGING_BODY_PART_ALIASES), e.g. THORAX and LUNG -> CHEST, BRST -> BREAST.

    The defined terms are those of PS3.16 Annex L (CID 4031 "Common Anatomic Regions" with
    their BodyPartExamined values); the pipelines' ``match.body_part_examined`` lists use them.
    Both sides must be Code Strings; a key is compared upper-cased, as the decoder lets lower
    case through (common and harmless). Mapped values are not mapped again. An empty value is
    not mappable: it says nothing about the body part, so such a study runs only where the
    caller names the pipeline (an audited override).
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        aliases: dict[str, str] = {}
        for raw, term in (mapping or {}).items():
            key = raw.strip().upper()
            if not key:
                raise ValueError(
                    "body part aliases: an empty BodyPartExamined cannot be mapped (it names no "
                    "body part); name the pipeline in the request instead"
                )
            for what, value in (("value", key), ("defined term", term)):
                if not _CODE_STRING.fullmatch(value):
                    raise ValueError(
                        f"body part aliases: {what} {value[:20]!r} is not a DICOM Code String "
                        "(CS: A-Z, 0-9, space and _, at most 16 characters, PS3.5 6.2)"
                    )
            if key in aliases:
                raise ValueError(f"body part aliases: {key!r} is mapped twice")
            aliases[key] = term
        for key, term in aliases.items():
            if term in aliases and aliases[term] != term:
                raise ValueError(
                    f"body part aliases: {key!r} maps to {term!r}, which is itself mapped; "
                    "map every value to its defined term directly"
                )
        self._aliases = aliases

    def __bool__(self) -> bool:
        return bool(self._aliases)

    def as_dict(self) -> dict[str, str]:
        return dict(self._aliases)

    def apply(self, attrs: ImageAttributes) -> ImageAttributes:
        """``attrs`` with its BodyPartExamined replaced by the defined term it stands for."""
        term = self._aliases.get(attrs.body_part_examined.strip().upper())
        if term is None:
            return attrs
        return dataclasses.replace(attrs, body_part_examined=term)


class Range(_Spec):
    """Bounds, inclusive; None is open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, unit: str) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g}-{self.max:g} {unit}"
        if self.min is not None:
            return f"at least {self.min:g} {unit}"
        return f"at most {self.max:g} {unit}"


class Coverage(_Spec):
    """How much of the anatomy a volume pipeline's series must span along the slice normal
    (the slice count and the extent, slices x slice spacing, of the assembled volume).

    Checked by the preprocessor once the series is assembled. A series below it (a slab: a few
    slices of an EPI run, a localizer) is always refused (OutsideIntendedUse), whatever
    IntendedUse.outside says: a measurement of a whole organ from part of it is not an
    uncertain value but a wrong one, and a measurement carries no INDETERMINATE status.
    """

    min_slices: int = Field(0, ge=0, description="fewest slices the assembled volume may have")
    min_extent_mm: float = Field(
        0.0, ge=0, description="shortest extent along the slice normal (slices x spacing, mm)"
    )

    def shortfalls(self, slices: int, spacing_mm: float) -> list[str]:
        """Why a volume of ``slices`` slices ``spacing_mm`` apart is too short (empty: it is
        not)."""
        found = []
        if slices < self.min_slices:
            found.append(f"{slices} slice(s), fewer than the {self.min_slices} it needs")
        extent = slices * spacing_mm
        if extent < self.min_extent_mm:
            found.append(
                f"it spans {extent:.1f} mm along the slice normal ({slices} x "
                f"{spacing_mm:.3g} mm), less than the {self.min_extent_mm:g} mm it needs"
            )
        return found


class IntendedUse(_Spec):
    """Who and what the model was trained for, checked on every image before inference.

    Only what the training data states belongs here. Outside it the study is refused
    (FAILED_PRECONDITION) or its findings come back INDETERMINATE ("flag"). The patient's age
    is read only for this check: a reason names the range, never the age.
    """

    population: str = Field(min_length=1, description="the training population in words")
    age_years: Range | None = None
    age_unknown: Literal["refuse", "flag", "accept"] = "flag"
    presentation_intent_type: list[str] = []
    view_position: list[str] = []
    photometric_interpretation: list[str] = []
    pixel_spacing_mm: Range | None = None
    min_matrix: int = Field(0, ge=0, description="smallest rows and columns an image may have")
    coverage: Coverage | None = Field(
        None, description="volume pipelines: the extent the series must span (see Coverage)"
    )
    outside: Literal["refuse", "flag"] = "flag"

    def judge(self, attrs: ImageAttributes, rows: int, columns: int) -> tuple[list[Caveat], bool]:
        """Why this image is outside the intended use (empty: inside), and whether that
        refuses the study (else it flags the image's findings)."""
        found: list[Caveat] = []
        refuse = False

        def outside(
            detail: str,
            reason: CaveatReason = CaveatReason.OUTSIDE_INTENDED_USE,
            policy: str = self.outside,
        ) -> None:
            nonlocal refuse
            found.append(Caveat(reason, f"outside intended use: {detail}", attrs.sop_instance_uid))
            refuse = refuse or policy == "refuse"

        age = attrs.patient_age_years
        if self.age_years is not None:
            ages = self.age_years.describe("years")
            if age is None and self.age_unknown != "accept":
                outside(f"patient age unknown (intended {ages})", policy=self.age_unknown)
            elif age is not None and not self.age_years.holds(age):
                outside(f"patient age outside {ages}")
        for keyword, allowed, value in (
            (
                "PresentationIntentType",
                self.presentation_intent_type,
                attrs.presentation_intent_type,
            ),
            ("ViewPosition", self.view_position, attrs.view_position),
            (
                "PhotometricInterpretation",
                self.photometric_interpretation,
                attrs.photometric_interpretation,
            ),
        ):
            if allowed and value.upper() not in {a.upper() for a in allowed}:
                outside(f"{keyword} is {_shown(keyword, value, attrs)}, intended one of {allowed}")
        if self.pixel_spacing_mm is not None:
            spacing = attrs.pixel_spacing
            wanted = self.pixel_spacing_mm.describe("mm")
            if spacing is None:
                outside(f"pixel spacing unknown (intended {wanted})")
            elif not all(self.pixel_spacing_mm.holds(v) for v in spacing):
                outside(f"pixel spacing {spacing[0]:g} x {spacing[1]:g} mm, intended {wanted}")
        if self.min_matrix and min(rows, columns) < self.min_matrix:
            outside(
                f"{rows} x {columns} pixels, below the {self.min_matrix} the model needs",
                CaveatReason.IMAGE_QUALITY,
            )
        return found, refuse


class ModalityLut(_Spec):
    """Stored values -> modality units (RescaleSlope/Intercept, e.g. HU for CT)."""

    op: Literal["modality_lut"]


class VoiWindow(_Spec):
    """Window to [0, 1]: the file's window, else this default, else the stored bit range."""

    op: Literal["voi_window"]
    center: float | None = None
    width: float | None = Field(None, gt=0)
    prefer_file_window: bool = True


class InvertMonochrome1(_Spec):
    """MONOCHROME1 shows low values as white; flip so that air is dark as in training."""

    op: Literal["invert_monochrome1"]


class CenterCropSquare(_Spec):
    op: Literal["center_crop_square"]


class Resize(_Spec):
    """Area-averaging resize (anti-aliased when shrinking), as PIL's BOX filter."""

    op: Literal["resize"]
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class Normalize(_Spec):
    op: Literal["normalize"]
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class ResampleVolume(_Spec):
    """Trilinear resample of an assembled volume to a fixed grid (slices, rows, cols)."""

    op: Literal["resample_volume"]
    shape: tuple[int, int, int]


class ScaleByMax(_Spec):
    """Divide by the volume's maximum (inputs in [0, 1] for models trained that way)."""

    op: Literal["scale_by_max"]


Step = Annotated[
    ModalityLut
    | VoiWindow
    | InvertMonochrome1
    | CenterCropSquare
    | Resize
    | Normalize
    | ResampleVolume
    | ScaleByMax,
    Field(discriminator="op"),
]
IMAGE_STEPS = (ModalityLut, VoiWindow, InvertMonochrome1, CenterCropSquare, Resize, Normalize)
VOLUME_STEPS = (ModalityLut, ResampleVolume, ScaleByMax, Normalize)


class ModelSpec(_Spec):
    name: str
    version: str = Field("", description="empty = the latest version Triton serves")
    input: str
    channels: int = Field(1, gt=0, description="channel count the model expects")
    outputs: list[str] = Field(min_length=1)


class FindingRule(_Spec):
    concept: CodedConcept
    output: str
    index: int = Field(0, ge=0, description="column of the output row holding the logit")
    activation: Literal["sigmoid", "none"] = "sigmoid"
    threshold: float = Field(ge=0, le=1)
    heatmap_output: str | None = Field(
        None, description="model output holding this finding's class activation map"
    )
    priority_if_positive: TriagePriority = TriagePriority.URGENT
    expected_positive_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="share of decided findings the card expects positive (drift alerts)",
    )


class MeasurementRule(_Spec):
    """Volume of the voxels whose output is at or above the threshold, on the original grid."""

    concept: CodedConcept
    output: str
    threshold: float = Field(0.5, ge=0, le=1)
    unit: Literal["mL"] = "mL"
    segmentation_label: str = Field("", description="also return the mask under this label")


class OodRule(_Spec):
    """The model's out-of-distribution score: above ``threshold`` (calibrated on validation
    data, see the model card) an image's findings are INDETERMINATE."""

    output: str
    threshold: float
    acceptance: float = Field(
        gt=0, le=1, description="share of in-distribution validation images below threshold"
    )


class Postprocess(_Spec):
    findings: list[FindingRule] = []
    ood: OodRule | None = None
    measurements: list[MeasurementRule] = []
    default_priority: TriagePriority = TriagePriority.ROUTINE
    heatmap_opacity: float = Field(0.45, ge=0, le=1, description="overlay alpha at full CAM")


class StudyLimits(_Spec):
    """What one study for this pipeline may be, beyond the gateway's own limits
    (IMAGING_MAX_INSTANCES, IMAGING_MAX_STUDY_BYTES): those stay the ceiling, so a pipeline
    can only lower them (the tighter applies; absent: the gateway's). An image pipeline
    analyses each instance, so a study of hundreds is a mistake there that a CT series is not.
    Checked by the gateway once the study's pipeline is known (named: while receiving)."""

    max_instances: int | None = Field(None, gt=0, description="instances per study")
    max_study_bytes: int | None = Field(None, gt=0, description="DICOM bytes per study")


class Pipeline(_Spec):
    name: str = Field(pattern=f"^{PIPELINE_NAME}$")
    description: str = ""
    kind: Literal["image", "volume"] = Field(
        "image", description="image: each instance is a model input; volume: the series is"
    )
    match: Match = Match()
    auto_route: bool = Field(
        True, description="False: runs only when a request names it (e.g. a slower ensemble)"
    )
    preprocess: list[Step] = Field(min_length=1)
    refuse_volume_issues: list[VolumeIssue] = Field(
        [],
        description="volume pipelines: refuse a series whose assembly reports one of these "
        "(e.g. gaps: missing slices would make a volume in mL wrong); others become warnings",
    )
    intended_use: IntendedUse | None = Field(
        None, description="checked on every image before inference; see IntendedUse"
    )
    model: ModelSpec
    postprocess: Postprocess
    limits: StudyLimits = Field(
        StudyLimits(), description="per-study limits below the gateway's; see StudyLimits"
    )

    @model_validator(mode="after")
    def _outputs_exist(self) -> Pipeline:
        rules = self.postprocess
        if rules.ood is not None and rules.ood.output not in self.model.outputs:
            raise ValueError(f"the ood rule reads unknown output {rules.ood.output!r}")
        if not rules.findings and not rules.measurements:
            raise ValueError("a pipeline needs at least one finding or measurement rule")
        if self.refuse_volume_issues and self.kind != "volume":
            raise ValueError("refuse_volume_issues applies to volume pipelines only")
        if self.intended_use and self.intended_use.coverage and self.kind != "volume":
            raise ValueError("intended_use.coverage applies to volume pipelines only")
        allowed = VOLUME_STEPS if self.kind == "volume" else IMAGE_STEPS
        for step in self.preprocess:
            if not isinstance(step, allowed):
                raise ValueError(f"step {step.op!r} does not apply to {self.kind} pipelines")
        for measure in rules.measurements:
            if measure.output not in self.model.outputs:
                raise ValueError(
                    f"measurement {measure.concept.code} reads unknown output {measure.output!r}"
                )
            if self.kind != "volume":
                raise ValueError("measurements need a volume pipeline")
        for rule in self.postprocess.findings:
            for output in (rule.output, rule.heatmap_output):
                if output is not None and output not in self.model.outputs:
                    raise ValueError(f"finding {rule.concept.code} reads unknown output {output!r}")
        return self


class PipelineRegistry:
    """All pipelines of a deployment, loaded once at start-up from a folder of YAML files."""

    def __init__(
        self, pipelines: list[Pipeline], body_parts: BodyPartAliases | None = None
    ) -> None:
        self._by_name = {p.name: p for p in pipelines}
        if len(self._by_name) != len(pipelines):
            raise ValueError("two pipeline files use the same name")
        self._body_parts = body_parts or BodyPartAliases()

    @classmethod
    def load(cls, folder: Path, body_parts: BodyPartAliases | None = None) -> PipelineRegistry:
        pipelines = []
        for path in sorted(folder.glob("*.yaml")):
            try:
                pipelines.append(Pipeline.model_validate(yaml.safe_load(path.read_text())))
            except ValidationError as err:
                raise ValueError(f"invalid pipeline spec {path.name}: {err}") from err
        if not pipelines:
            raise ValueError(f"no pipeline specs (*.yaml) in {folder}")
        return cls(pipelines, body_parts)

    def all(self) -> list[Pipeline]:
        return list(self._by_name.values())

    def get(self, name: str) -> Pipeline:
        """The pipeline a caller named; a name outside PIPELINE_NAME is unknown, quoted short."""
        pipeline = self._by_name.get(name) if is_pipeline_name(name) else None
        if pipeline is None:
            known = ", ".join(sorted(self._by_name))
            raise NotFound(
                f"unknown pipeline {quote_prefix(name)}; this deployment serves: {known}"
            )
        return pipeline

    def route(self, images: list[ImageAttributes]) -> Pipeline:
        """The first auto-routed pipeline (by name) accepting every image, else why none did."""
        images = [self._body_parts.apply(a) for a in images]
        reasons = []
        routed = (p for p in self._by_name.values() if p.auto_route)
        for pipeline in sorted(routed, key=lambda p: p.name):
            problems = _problems(pipeline, images)
            if not problems:
                return pipeline
            reasons.append(f"{pipeline.name}: {'; '.join(problems)}")
        raise NoMatchingPipeline("no pipeline accepts this study (" + " | ".join(reasons) + ")")

    def check(self, pipeline: Pipeline, images: list[ImageAttributes]) -> Pipeline:
        """A pipeline named by the caller runs on studies of the kind it accepts; its routing
        tags may differ (see :meth:`override`)."""
        self.override(pipeline, images)
        return pipeline

    def override(self, pipeline: Pipeline, images: list[ImageAttributes]) -> list[str]:
        """Keywords of the routing tags (ROUTING_ONLY_TAGS) on which naming ``pipeline``
        overrides its match, sorted; empty when the study matches as it is.

        Naming a pipeline is the way out for studies whose BodyPartExamined is empty or
        site-specific: the caller vouches for the anatomy. It never overrides Modality or
        SOPClassUID (NoMatchingPipeline), and the pipeline's IntendedUse is judged as for a
        routed study; the gateway audits and warns about every override."""
        images = [self._body_parts.apply(a) for a in images]
        problems = sorted(
            {
                reason
                for a in images
                for tag, reason in pipeline.match.rejections(a)
                if tag not in ROUTING_ONLY_TAGS
            }
        )
        if problems:
            raise NoMatchingPipeline(
                f"pipeline {pipeline.name!r} does not accept this study: {'; '.join(problems)} "
                "(naming a pipeline overrides only BodyPartExamined and ViewPosition)"
            )
        return sorted({t for a in images for t in pipeline.match.mismatched_tags(a)})


def _problems(pipeline: Pipeline, images: list[ImageAttributes]) -> list[str]:
    return sorted({m for a in images for m in pipeline.match.mismatches(a)})
