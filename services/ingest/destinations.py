"""Where results go: destinations and routing rules, one YAML file (IMAGING_DESTINATIONS_FILE).

    destinations:
      pacs: {type: dicom, ae_title: ORTHANC, host: 10.0.0.5, port: 4242}
      archive:
        type: dicomweb
        url: https://pacs.example.org/dicom-web
        auth: {bearer_token_file: /run/secrets/pacs-token}
      ehr:
        type: fhir
        url: https://fhir.example.org/R4
        auth: {username: imaging, password_file: /run/secrets/ehr-password}
    rules:
      - {destinations: [pacs], documents: [sr, seg]}
      - {destinations: [ehr], documents: [fhir], pipelines: [cxr_pneumonia], refusals: true,
         identity: true}

A rule without ``pipelines`` or ``calling_ae_titles`` matches every result; ``refusals`` (off by
default) also sends the refusal SR and cancelled report of a refused study; ``identity`` (off
by default, FHIR only) names the patient by identifier in the report. There is no default
destination: without the file nothing is exported. Secrets are read from files, never written in
the file itself. Every mistake (an unknown destination in a rule, FHIR to a DICOM peer, a bad AE
title) stops the ingest at start-up with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.dicom import checked_ae_title

# Document names in rules -> the kinds the gateway gives its documents (EncodedObject.kind).
DOCUMENT_KINDS = {"sr": "dicom_sr", "seg": "dicom_seg", "heatmap": "dicom_heatmap", "fhir": "fhir"}
DocumentName = Literal["sr", "seg", "heatmap", "fhir"]
_PATTERN = re.compile(r"[a-z-]+(:[0-9A-Fa-fx]+)?")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Spec):
    """Exponential back-off with jitter between attempts, bounded in count and in age."""

    # 5 s doubling to 15 min: 100 attempts span about 24 hours, as max_age does, so a PACS down
    # over a night is retried until it is back rather than dead-lettered after half an hour.
    max_attempts: int = Field(100, gt=0, description="attempts before the dead letters")
    max_age_seconds: float = Field(86400.0, gt=0, description="older exports are dead-lettered")
    backoff_seconds: float = Field(5.0, gt=0, description="the first wait; doubles each time")
    max_backoff_seconds: float = Field(900.0, gt=0, description="the longest wait")

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (jitter is the exporter's)."""
        return float(min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1)))


class FailureTable(_Spec):
    """Which failures are retried and which dead-letter at once, by pattern: ``dimse:0xA7xx``
    (x: any hex digit), ``http:5xx``, ``http:429``, or a word a sender reports
    (``timeout``, ``connection``, ``association-rejected-transient``,
    ``association-rejected-permanent``, ``sop-class-not-supported``, ``unconfirmed``).
    The most specific matching pattern wins (``http:429`` over ``http:4xx``); a failure
    matching nothing is transient (its attempts are bounded anyway)."""

    transient: list[str] = [
        "timeout",
        "connection",
        "association-rejected-transient",
        "unconfirmed",
        "dimse:0xA7xx",
        "http:5xx",
        "http:429",
        "http:408",
    ]
    permanent: list[str] = [
        "association-rejected-permanent",
        "sop-class-not-supported",
        "dimse:0x0122",  # SOP class not supported (PS3.7 C.4.2)
        "dimse:0x0124",  # not authorized
        "dimse:0xA9xx",
        "dimse:0xCxxx",
        "http:4xx",
    ]

    @field_validator("transient", "permanent")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not _PATTERN.fullmatch(pattern):
                raise ValueError(f"not a failure pattern: {pattern!r}")
        return value

    def is_permanent(self, failure: str) -> bool:
        """``failure``: e.g. ``dimse:0xA700``, ``http:503``, ``timeout``."""
        best: tuple[int, bool] = (-1, False)
        for permanent, patterns in ((False, self.transient), (True, self.permanent)):
            for pattern in patterns:
                if _matches(pattern, failure):
                    weight = sum(1 for ch in pattern if ch != "x")
                    if weight > best[0]:
                        best = (weight, permanent)
        return best[1]


def _matches(pattern: str, failure: str) -> bool:
    if len(pattern) != len(failure):
        return False
    return all(p == "x" or p.lower() == f.lower() for p, f in zip(pattern, failure, strict=True))


class TlsFilesSpec(_Spec):
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


class HttpAuth(_Spec):
    bearer_token_file: Path | None = None
    username: str = ""
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HttpAuth:
        if self.bearer_token_file is not None and (self.username or self.password_file):
            raise ValueError("auth: a bearer token or a username and password, not both")
        if bool(self.username) != (self.password_file is not None):
            raise ValueError("auth: basic needs both username and password_file")
        return self


class _Destination(_Spec):
    retry: RetryPolicy = RetryPolicy()
    failures: FailureTable = FailureTable()


class DicomDestination(_Destination):
    type: Literal["dicom"]
    ae_title: str
    host: str
    port: int = Field(gt=0, le=65535)
    # Our AE title towards it (the peer may only accept known callers).
    calling_ae_title: str = "IMAGING"
    tls: TlsFilesSpec | None = None
    # Storage Commitment (PS3.4 J): the delivery is confirmed only once the peer reports it
    # holds every instance; its N-EVENT-REPORT comes back on a new association to our SCP.
    storage_commitment: bool = True
    commitment_timeout_seconds: float = Field(60.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return checked_ae_title(value)

    def accepts(self, document: str) -> bool:
        return document != "fhir"


class _HttpDestination(_Destination):
    """What every HTTP destination has (senders/http.py reads these)."""

    url: str = Field(pattern=r"^https?://")
    auth: HttpAuth | None = None
    ca_file: Path | None = None


class DicomWebDestination(_HttpDestination):
    type: Literal["dicomweb"]
    timeout_seconds: float = Field(60.0, gt=0)

    def accepts(self, document: str) -> bool:
        return document != "fhir"


class FhirDestination(_HttpDestination):
    type: Literal["fhir"]
    timeout_seconds: float = Field(30.0, gt=0)

    def accepts(self, document: str) -> bool:
        return document == "fhir"


Destination = Annotated[
    DicomDestination | DicomWebDestination | FhirDestination, Field(discriminator="type")
]


class Rule(_Spec):
    destinations: list[str] = Field(min_length=1)
    documents: list[DocumentName] = Field(min_length=1)
    pipelines: list[str] | None = None
    calling_ae_titles: list[str] | None = None
    refusals: bool = False
    # FHIR only: the DiagnosticReport and Observations name the patient, as a Patient reference
    # by identifier (PatientID, with IssuerOfPatientID as its assigner), for an EHR that files
    # by patient. Off: no identity leaves the platform (the EHR links by the study's UID).
    identity: bool = False

    def matches(self, pipeline: str, calling_ae: str, refused: bool) -> bool:
        if refused and not self.refusals:
            return False
        if self.pipelines is not None and pipeline not in self.pipelines:
            return False
        return self.calling_ae_titles is None or calling_ae in self.calling_ae_titles


_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class Destinations(_Spec):
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _consistent(self) -> Destinations:
        for name in self.destinations:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"destination name {name!r}: 1-32 of a-z 0-9 _ - (it names NATS subjects)"
                )
        for index, rule in enumerate(self.rules, start=1):
            for name in rule.destinations:
                target = self.destinations.get(name)
                if target is None:
                    raise ValueError(f"rule {index}: unknown destination {name!r}")
                if rule.identity and target.type != "fhir":
                    raise ValueError(f"rule {index}: identity applies to FHIR destinations only")
                refused = [d for d in rule.documents if not target.accepts(d)]
                if refused:
                    raise ValueError(
                        f"rule {index}: {name} ({target.type}) cannot take {', '.join(refused)}"
                    )
        return self

    @classmethod
    def load(cls, path: Path | None) -> Destinations:
        if path is None:
            return cls()
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})

    def identity(self, pipeline: str, calling_ae: str, refused: bool) -> set[str]:
        """The destinations a matching rule lets name the patient."""
        return {
            name
            for rule in self.rules
            if rule.identity and rule.matches(pipeline, calling_ae, refused)
            for name in rule.destinations
        }

    def route(self, pipeline: str, calling_ae: str, refused: bool) -> dict[str, set[str]]:
        """Destination -> the document kinds (EncodedObject.kind) it gets of one result."""
        routed: dict[str, set[str]] = {}
        for rule in self.rules:
            if rule.matches(pipeline, calling_ae, refused):
                for name in rule.destinations:
                    routed.setdefault(name, set()).update(DOCUMENT_KINDS[d] for d in rule.documents)
        return routed
