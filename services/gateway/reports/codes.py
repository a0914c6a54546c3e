"""The coded terms the report builders write (what a conformance statement lists).

Standard codes come from pydicom's DICOM code dictionary (DCM, SCT, UCUM); the platform's own
terms for *why* a result is not a decision have no standard code, so they live in a private
coding scheme, declared in each object's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes

from services.common.results import CaveatReason, CodedConcept, FindingStatus

# Private coding scheme: "99" prefix (PS3.16 section 8.2: local coding schemes).
PRIVATE_SCHEME: Final = "99IMGPLAT"
PRIVATE_SCHEME_NAME: Final = "imaging-platform result qualifiers"


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification Sequence items for the private scheme."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name=PRIVATE_SCHEME_NAME,
            responsible_organization="imaging-platform",
        )
    ]


# --- finding status (value of a qualitative evaluation named by the finding's concept) ---
# POSITIVE and NEGATIVE are CID 240's Present/Absent; INDETERMINATE is SCT "Indeterminate",
# never Present.
STATUS_CODES: Final[dict[FindingStatus, hd.sr.CodedConcept]] = {
    FindingStatus.POSITIVE: hd.sr.CodedConcept.from_code(codes.SCT.Present),  # 52101004
    FindingStatus.NEGATIVE: hd.sr.CodedConcept.from_code(codes.SCT.Absent),  # 272519000
    FindingStatus.INDETERMINATE: hd.sr.CodedConcept.from_code(codes.SCT.Indeterminate),  # 82334004
}

# --- caveats: why a result is not a decision ---
CAVEAT: Final = _private("CAVEAT", "Result caveat")
# (code value, meaning) per reason; code values fit a Code Value (SH, 16 characters), and the
# FHIR output uses the same codes in its own code system.
CAVEAT_TERMS: Final[dict[CaveatReason, tuple[str, str]]] = {
    CaveatReason.OUTSIDE_INTENDED_USE: ("OUTSIDE_USE", "Outside intended use"),
    CaveatReason.OUT_OF_DISTRIBUTION: ("OUT_OF_DIST", "Out of distribution"),
    CaveatReason.IMAGE_QUALITY: ("IMAGE_QUALITY", "Image quality"),
}
CAVEAT_CODES: Final[dict[CaveatReason, hd.sr.CodedConcept]] = {
    reason: _private(value, meaning) for reason, (value, meaning) in CAVEAT_TERMS.items()
}
# A study the platform refused: no finding was produced, this is why.
REFUSAL_REASON: Final = _private("REFUSAL", "Reason the study was not analyzed")

# --- measurements and summaries ---
PROBABILITY: Final = hd.sr.CodedConcept.from_code(codes.DCM.Probability)  # DCM 122157
THRESHOLD: Final = hd.sr.CodedConcept.from_code(codes.DCM.ThresholdValue)  # DCM 122411
NO_UNITS: Final = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
# Mammography/chest CAD's summary (CID 6047), used for a refused study.
PROCESSING_SUMMARY: Final = hd.sr.CodedConcept.from_code(codes.DCM.CADProcessingAndFindingsSummary)
NOT_ANALYZED: Final = hd.sr.CodedConcept.from_code(
    codes.DCM.NoAlgorithmsSucceededWithoutFindings  # DCM 111245
)
# The model ran and found nothing to report (no finding rules, no measurements).
NO_FINDINGS: Final = hd.sr.CodedConcept.from_code(
    codes.DCM.AllAlgorithmsSucceededWithoutFindings  # DCM 111241
)
REPORT_TITLE: Final = hd.sr.CodedConcept.from_code(codes.cid7021.ImagingMeasurementReport)
PROCEDURE_REPORTED: Final = hd.sr.CodedConcept.from_code(codes.cid100.ImagingProcedure)
ALGORITHM_FAMILY: Final = hd.sr.CodedConcept.from_code(codes.cid7162.ArtificialIntelligence)
DEVICE_OBSERVER: Final = hd.sr.CodedConcept.from_code(codes.cid270.Device)

# UCUM units the platform's measurements use, with the code meaning DICOM expects.
UCUM_MEANINGS: Final = {
    "1": "no units",
    "mL": "milliliter",
    "ml": "milliliter",
    "L": "liter",
    "mm": "millimeter",
    "cm": "centimeter",
    "mm2": "square millimeter",
    "cm2": "square centimeter",
    "mm3": "cubic millimeter",
    "cm3": "cubic centimeter",
}

# Segment labels (services.common.grids.Segmentation.label) -> (category, type), CID 7150/7151.
SEGMENT_CODES: Final[dict[str, tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]]] = {
    "brain": (
        hd.sr.CodedConcept.from_code(codes.cid7150.AnatomicalStructure),  # SCT 91723000
        hd.sr.CodedConcept.from_code(codes.SCT.Brain),  # SCT 12738006
    ),
}


def unit(code: str) -> hd.sr.CodedConcept:
    """A UCUM unit as a coded concept."""
    return hd.sr.CodedConcept(
        value=code, scheme_designator="UCUM", meaning=UCUM_MEANINGS.get(code, code)
    )


def concept(c: CodedConcept) -> hd.sr.CodedConcept:
    """The platform's coded concept as a DICOM one."""
    return hd.sr.CodedConcept(
        value=c.code, scheme_designator=c.coding_scheme, meaning=c.display_name
    )
