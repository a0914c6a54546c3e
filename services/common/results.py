"""The contract between the services: what a study's analysis produces (no protobuf here).

The postprocessor builds these, the gateway returns them and the CLI prints them; they live
here so that no service has to import another to name its return types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from services.common.grids import Segmentation


class TriagePriority(StrEnum):
    """How soon a radiologist should read the study, least urgent first."""

    ROUTINE = "ROUTINE"
    URGENT = "URGENT"
    STAT = "STAT"

    @property
    def rank(self) -> int:
        return list(TriagePriority).index(self)

    def at_least(self, other: TriagePriority) -> TriagePriority:
        """The more urgent of the two."""
        return other if other.rank > self.rank else self


class RequestPriority(StrEnum):
    """Where the caller wants the request in the inference server's queue."""

    DEFAULT = "DEFAULT"
    ROUTINE = "ROUTINE"
    URGENT = "URGENT"

    @property
    def rank(self) -> int:
        """The one order of urgency (ROUTINE < DEFAULT < URGENT): client policies' ceilings."""
        return _PRIORITY_ORDER.index(self)

    @property
    def triton_priority(self) -> int:
        """Triton: 1 is the highest configured level, 0 the model's default; models configured
        without priority levels (the shipped default) ignore it."""
        return {"DEFAULT": 0, "URGENT": 1, "ROUTINE": 2}[self.value]


_PRIORITY_ORDER = (RequestPriority.ROUTINE, RequestPriority.DEFAULT, RequestPriority.URGENT)


class CodedConcept(BaseModel):
    """A coded term, e.g. SNOMED CT 233604007 "Pneumonia" (DICOM code sequence item)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=64)
    coding_scheme: str = Field("SCT", min_length=1, max_length=16)
    display_name: str = Field(min_length=1, max_length=64)


class FindingStatus(StrEnum):
    POSITIVE = "POSITIVE"
    NEGATIVE = "NEGATIVE"
    # Not a decision (see the caveats): never raises the triage priority.
    INDETERMINATE = "INDETERMINATE"


class CaveatReason(StrEnum):
    OUTSIDE_INTENDED_USE = "OUTSIDE_INTENDED_USE"
    OUT_OF_DISTRIBUTION = "OUT_OF_DISTRIBUTION"
    IMAGE_QUALITY = "IMAGE_QUALITY"


@dataclass(frozen=True)
class Caveat:
    """Why the findings of one image are not a decision; ``detail`` never quotes identity or
    age."""

    reason: CaveatReason
    detail: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one image."""

    concept: CodedConcept
    probability: float
    threshold: float
    positive: bool
    sop_instance_uid: str
    heatmap_png: bytes = b""
    # None: POSITIVE or NEGATIVE as ``positive`` says.
    status: FindingStatus | None = None
    caveats: tuple[Caveat, ...] = ()
    ood_score: float = 0.0
    ood_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.status is None:
            derived = FindingStatus.POSITIVE if self.positive else FindingStatus.NEGATIVE
            object.__setattr__(self, "status", derived)
        if self.positive != (self.status is FindingStatus.POSITIVE):
            raise ValueError(
                f"a finding with status {self.status} cannot be positive={self.positive}"
            )
        if (self.status is FindingStatus.INDETERMINATE) != bool(self.caveats):
            raise ValueError("a finding is INDETERMINATE exactly when it has caveats")


@dataclass(frozen=True)
class Measurement:
    """A quantity derived from a model output (e.g. brain volume) for one series."""

    concept: CodedConcept
    value: float
    unit: str
    series_instance_uid: str


@dataclass(frozen=True)
class Assessment:
    """What the postprocessor makes of one model call."""

    findings: list[Finding]
    triage_priority: TriagePriority
    measurements: list[Measurement] = field(default_factory=list)
    segmentations: list[Segmentation] = field(default_factory=list)
    # Why findings are INDETERMINATE, and caveats of images without findings (volumes).
    caveats: list[Caveat] = field(default_factory=list)


@dataclass(frozen=True)
class OutputOptions:
    """Heavy outputs the caller asked for (off by default: they cost time on every study)."""

    heatmaps: bool = False
    masks: bool = False
    dicom_sr: bool = False
    dicom_seg: bool = False
    dicom_heatmap: bool = False
    fhir: bool = False
    report_refusal: bool = False

    @property
    def documents(self) -> bool:
        """Whether any DICOM or FHIR document is asked for."""
        return self.dicom_sr or self.dicom_seg or self.dicom_heatmap or self.fhir

    def inner(self) -> OutputOptions:
        """What the inner services must compute: the documents need the heatmaps and masks."""
        return OutputOptions(
            heatmaps=self.heatmaps or self.dicom_heatmap, masks=self.masks or self.dicom_seg
        )


class DocumentKind(StrEnum):
    """The result documents a caller may ask for; each value is also its OutputOptions field
    and its name on the wire (OutputDocument.kind)."""

    DICOM_SR = "dicom_sr"  # Comprehensive 3D SR, TID 1500
    DICOM_SEG = "dicom_seg"  # Segmentation
    DICOM_HEATMAP = "dicom_heatmap"  # Secondary Capture of the heatmap over the image
    FHIR = "fhir"  # FHIR R4 DiagnosticReport bundle


@dataclass(frozen=True)
class EncodedObject:
    """A result document: DICOM Part 10 bytes or FHIR JSON (services/gateway/reports)."""

    kind: DocumentKind
    media_type: str
    data: bytes
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    name: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why a study was not analysed, as the error it would have raised."""

    kind: str
    reason: str


# What a request's uid_seed may be (AnalyzeRequest.uid_seed): 1 to 128 of these characters.
UID_SEED = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class Origin:
    """Who sent the study to the platform, asserted by a relay the gateway trusts for it (the
    ingest service, for studies received over DICOM): the gateway's client policy and audit
    key on it (services/gateway/policy.py), as the relay's own name says nothing about who
    the study came from. As received until the gateway has checked it."""

    calling_ae_title: str  # the DICOM association's calling AE title
    source_address: str  # the peer's IP address as the relay saw it


@dataclass(frozen=True)
class StudyRequest:
    instances: list[bytes]
    pipeline: str = ""
    priority: RequestPriority = RequestPriority.DEFAULT
    client: str = ""  # who asked (services/gateway/auth.py); "" when the gateway is open
    request_id: str = ""
    options: OutputOptions = field(default_factory=OutputOptions)
    # Set by a trusted relay only; None: the caller is the origin.
    origin: Origin | None = None
    # Non-empty: the result documents' UIDs derive from it (services/gateway/reports/uids.py),
    # so a re-run of the same analysis makes the same objects.
    uid_seed: str = ""
    # DICOM Part 10 SRs of earlier versions of this result (same study, as sent; the gateway
    # judges them): the new SR names them in its Predecessor Documents Sequence.
    predecessors: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True)
class StudyResult:
    request_id: str
    pipeline: str
    model: ModelRef
    assessment: Assessment
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Caveats about the input the caller should see (e.g. missing slices of a volume).
    warnings: list[str] = field(default_factory=list)
    outputs: list[EncodedObject] = field(default_factory=list)
    refusal: Refusal | None = None
