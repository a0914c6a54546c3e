"""Findings and measurements as FHIR: a collection Bundle of a DiagnosticReport, its
Observations and the Device (the model version) that made them.

Version: fhir.resources 8 ships R5 as its default models, R4B (4.3.0) and STU3; there is no
plain R4 package. The R4B models are used: DiagnosticReport, Observation, Device and Bundle did
not change between R4 (4.0.1) and R4B, so the JSON is R4 JSON (no R5-only element is written;
e.g. the device is named by Observation.device, not R5's DiagnosticReport.performer Device).

Identity: no Patient resource and no subject. The EHR links the report to its patient by the
study (ImagingStudy identifier urn:dicom:uid), as it does for the images themselves; copying a
patient id here would put identity in a second place for no gain.

INDETERMINATE: Observation.interpretation is v3 ObservationInterpretation IND, never POS; each
caveat is a component (coded reason, the detail as text) and a note; the probability stays in
valueQuantity (the model's output, which is not a decision here).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from services.common.results import (
    Caveat,
    CodedConcept,
    Finding,
    FindingStatus,
    Measurement,
    StudyResult,
)
from services.gateway.reports import codes, uids
from services.gateway.reports._common import Context

FHIR_VERSION = "4.3.0"  # R4B; R4-compatible for the resources written
MEDIA_TYPE = "application/fhir+json"

SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://radlex.org",
}
UCUM = SYSTEMS["UCUM"]
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# The platform's own caveat codes (DICOM: private scheme 99IMGPLAT). A site that publishes its
# own code system URL replaces this one.
CAVEAT_SYSTEM = "http://imaging-platform.invalid/fhir/CodeSystem/result-caveat"
DICOM_UID = "urn:dicom:uid"

_INTERPRETATIONS = {
    FindingStatus.POSITIVE: ("POS", "Positive"),
    FindingStatus.NEGATIVE: ("NEG", "Negative"),
    FindingStatus.INDETERMINATE: ("IND", "Indeterminate"),
}
_CAVEAT_DISPLAY = {reason: meaning for reason, (_, meaning) in codes.CAVEAT_TERMS.items()}


def _coding(c: CodedConcept) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": c.code, "display": c.display_name}
    if c.coding_scheme in SYSTEMS:
        coding["system"] = SYSTEMS[c.coding_scheme]
    return {"coding": [coding], "text": c.display_name}


def _uid_identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def _study_refs(sources: Sequence[Dataset]) -> list[dict[str, Any]]:
    uids = list(dict.fromkeys(str(ds.StudyInstanceUID) for ds in sources))
    return [{"type": "ImagingStudy", "identifier": _uid_identifier(uid)} for uid in uids]


def _caveat_parts(caveats: Sequence[Caveat]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    components = []
    notes = []
    for c in caveats:
        display = _CAVEAT_DISPLAY[c.reason]
        components.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": CAVEAT_SYSTEM,
                            "code": codes.CAVEAT_TERMS[c.reason][0],
                            "display": display,
                        }
                    ],
                    "text": display,
                },
                "valueString": c.detail or display,
            }
        )
        notes.append({"text": f"Not a decision: {display.lower()}: {c.detail}"})
    return components, notes


# The order the report answers, as the EHR files it: the study's Accession Number as a
# ServiceRequest identifier of type ACSN (HL7 v2 table 0203), the way FHIR's ImagingStudy
# and DiagnosticReport carry it. An order number, not a patient's identity.
_ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
# VR SH (PS3.5 6.2): at most 16 characters, no backslash or control characters.
_SHORT_STRING = re.compile(r"[^\\\x00-\x1f]{1,16}")


def _accession(sources: Sequence[Dataset]) -> str:
    """The study's Accession Number, when every source that has one agrees and it is a valid
    Short String; "" otherwise (never guessed between two orders)."""
    values = [ds.get("AccessionNumber") for ds in sources]
    if any(v is not None and not isinstance(v, str) for v in values):
        return ""  # several values (a backslash in SH): not one order
    numbers = {str(v).strip() for v in values if v} - {""}
    if len(numbers) != 1:
        return ""
    (number,) = numbers
    return number if _SHORT_STRING.fullmatch(number) else ""


class _Builder:
    def __init__(self, sources: Sequence[Dataset], ctx: Context, issued: str) -> None:
        self.ctx = ctx
        self.issued = issued
        self.studies = _study_refs(sources)
        self.accession = _accession(sources)
        self.entries: list[dict[str, Any]] = []
        self.device_url = self._add(self._device())

    def _add(self, resource: dict[str, Any]) -> str:
        url = f"urn:uuid:{uids.uuid()}"
        self.entries.append({"fullUrl": url, "resource": resource})
        return url

    def _device(self) -> dict[str, Any]:
        ctx = self.ctx
        names = [{"name": ctx.model.name, "type": "model-name"}]
        if ctx.pipeline:
            names.append(
                {"name": f"{ctx.manufacturer} {ctx.pipeline}", "type": "user-friendly-name"}
            )
        return {
            "resourceType": "Device",
            # The SR's Device Observer UID: the same model version in both.
            "identifier": [_uid_identifier(ctx.device_uid)],
            "status": "active",
            "manufacturer": ctx.manufacturer,
            "deviceName": names,
            "version": [
                {"type": {"text": "model version"}, "value": ctx.model.version},
                {"type": {"text": "software version"}, "value": ctx.software_version},
            ],
        }

    def _observation(self, code: CodedConcept, **fields: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            # The algorithm's output, verified by nobody.
            "status": "preliminary",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "imaging",
                            "display": "Imaging",
                        }
                    ]
                }
            ],
            "code": _coding(code),
            "issued": self.issued,
            "device": {"reference": self.device_url, "display": self.ctx.algorithm},
            "derivedFrom": self.studies,
            **fields,
        }

    def finding(self, finding: Finding) -> str:
        status = finding.status or FindingStatus.NEGATIVE
        code, display = _INTERPRETATIONS[status]
        components, notes = _caveat_parts(finding.caveats)
        threshold = {
            "code": {
                "coding": [
                    {"system": SYSTEMS["DCM"], "code": "122411", "display": "Threshold Value"}
                ]
            },
            "valueQuantity": {"value": finding.threshold, "unit": "1", "system": UCUM, "code": "1"},
        }
        interpretation_text = (
            f"{display}: not a decision ({', '.join(c.reason.value for c in finding.caveats)})"
            if status is FindingStatus.INDETERMINATE
            else display
        )
        return self._add(
            self._observation(
                finding.concept,
                valueQuantity={
                    "value": finding.probability,
                    "unit": "probability",
                    "system": UCUM,
                    "code": "1",
                },
                interpretation=[
                    {
                        "coding": [{"system": INTERPRETATION, "code": code, "display": display}],
                        "text": interpretation_text,
                    }
                ],
                component=[threshold, *components],
                **({"note": notes} if notes else {}),
            )
        )

    def measurement(self, m: Measurement, caveats: Sequence[Caveat]) -> str:
        components, notes = _caveat_parts(caveats)
        return self._add(
            self._observation(
                m.concept,
                valueQuantity={"value": m.value, "unit": m.unit, "system": UCUM, "code": m.unit},
                **({"component": components} if components else {}),
                **({"note": notes} if notes else {}),
            )
        )

    def report(self, status: str, results: Sequence[str], conclusion: str, sr_uid: str) -> None:
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "status": status,
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                            "code": "RAD",
                            "display": "Radiology",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "18748-4",
                        "display": "Diagnostic imaging study",
                    },
                    {
                        "system": SYSTEMS["DCM"],
                        "code": "126000",
                        "display": "Imaging Measurement Report",
                    },
                ],
                "text": f"AI results: {self.ctx.pipeline}",
            },
            "issued": self.issued,
            "imagingStudy": self.studies,
            "conclusion": conclusion,
        }
        if sr_uid:
            # The DICOM SR with the same content, where one was made.
            report["identifier"] = [_uid_identifier(sr_uid)]
        if self.accession:
            report["basedOn"] = [
                {
                    "type": "ServiceRequest",
                    "identifier": {"type": _ACSN, "value": self.accession},
                }
            ]
        if results:
            report["result"] = [{"reference": url} for url in results]
        self.entries.insert(0, {"fullUrl": f"urn:uuid:{uids.uuid()}", "resource": report})

    def bundle(self) -> bytes:
        bundle = Bundle.model_validate(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "timestamp": self.issued,
                "entry": self.entries,
            }
        )
        return bundle.model_dump_json().encode()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _summary(f: Finding) -> str:
    status = f.status or FindingStatus.NEGATIVE
    text = (
        f"{f.concept.display_name}: {status.value} "
        f"(probability {f.probability:.3f}, threshold {f.threshold:.3f})"
    )
    if status is FindingStatus.INDETERMINATE:
        reasons = "; ".join(f"{_CAVEAT_DISPLAY[c.reason].lower()}: {c.detail}" for c in f.caveats)
        text += f", not a decision: {reasons}"
    return text


def report_bundle(
    sources: Sequence[Dataset], result: StudyResult, ctx: Context, *, sr_uid: str = ""
) -> bytes:
    """The result as FHIR JSON (a Bundle of type collection)."""
    builder = _Builder(sources, ctx, _now())
    assessment = result.assessment
    results = [builder.finding(f) for f in assessment.findings]
    on_findings = {c for f in assessment.findings for c in f.caveats}
    loose = [c for c in assessment.caveats if c not in on_findings]
    for m in assessment.measurements:
        # As in the SR: a measurement carries the caveats of its own series' images.
        in_series = {
            str(ds.SOPInstanceUID)
            for ds in sources
            if str(ds.SeriesInstanceUID) == m.series_instance_uid
        }
        mine = [c for c in loose if c.sop_instance_uid in in_series or not c.sop_instance_uid]
        results.append(builder.measurement(m, mine))
    lines = [_summary(f) for f in assessment.findings]
    lines += [f"{m.concept.display_name}: {m.value:.1f} {m.unit}" for m in assessment.measurements]
    lines += [f"Not a decision: {_CAVEAT_DISPLAY[c.reason].lower()}: {c.detail}" for c in loose]
    conclusion = f"{ctx.algorithm} ({result.pipeline}), unverified: " + (
        "; ".join(lines) if lines else "nothing to report"
    )
    builder.report("preliminary", results, conclusion, sr_uid)
    return builder.bundle()


def refusal_bundle(
    sources: Sequence[Dataset], reason: str, ctx: Context, *, sr_uid: str = ""
) -> bytes:
    """A cancelled DiagnosticReport: the study was not analysed, the conclusion says why."""
    builder = _Builder(sources, ctx, _now())
    conclusion = (
        f"Not analyzed by {ctx.pipeline or 'the platform'}: {reason} No finding was produced."
    )
    builder.report("cancelled", [], conclusion, sr_uid)
    return builder.bundle()
