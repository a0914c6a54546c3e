"""What every builder needs: header copies of the sources, identity-free error text, the
platform's device identity, Part 10 bytes."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset

from services.common.dicom import PIXEL_KEYWORDS
from services.common.errors import InvalidInput
from services.common.results import ModelRef

# Type 2 attributes highdicom reads from the first source (attribute access, no default).
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# What every result object references a source by.
_REQUIRED_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Values that identify the patient (or the encounter): kept out of error reasons and logs.
_IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "InstitutionName",
)


@dataclass(frozen=True)
class Context:
    """Who made the result: written into every object (equipment, algorithm, device)."""

    pipeline: str
    model: ModelRef
    manufacturer: str
    software_version: str
    # False: the platform's own rules decided (a refusal before any model ran).
    learned: bool = True

    @property
    def device_uid(self) -> str:
        """A stable UID for this model version on this platform (Device Observer UID, the FHIR
        Device's identifier): the same for every report the same model version makes."""
        name = "\x1f".join(["device", self.manufacturer, self.model.name, self.model.version])
        # A name-based (version 5) UUID as a 2.25 UID (PS3.5 B.2).
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"

    @property
    def algorithm(self) -> str:
        return f"{self.model.name} version {self.model.version}"


def header(ds: Dataset) -> Dataset:
    """A deep copy of ``ds`` without its pixel data, ready for highdicom: the Type 2 attributes
    it reads present (empty where the source has none) and person names it would warn about
    (quoting them) given their trailing component separator."""
    out = Dataset()
    for elem in ds:
        if elem.keyword not in PIXEL_KEYWORDS:
            out.add(copy.deepcopy(elem))
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in out:
            setattr(out, keyword, None)
    for keyword in ("PatientName", "ReferringPhysicianName"):
        name = str(out.get(keyword) or "")
        # "SMITH" and "SMITH^" are the same name (family name only); highdicom warns, with the
        # name in the message, about the first.
        if name and "^" not in name and "=" not in name:
            setattr(out, keyword, name + "^")
    if str(out.get("PatientSex") or "") not in ("", "M", "F", "O"):
        out.PatientSex = None
    return out


def restore_names(document: Dataset, source: Dataset) -> None:
    """The source's person names exactly as they were (header() gave highdicom a trailing
    separator to keep it from warning): PACS reconcile results with images by them."""
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if keyword in document and keyword in source:
            setattr(document, keyword, source.get(keyword))


def headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """Header copies of the study's instances; InvalidInput where one cannot be referenced."""
    if not sources:
        raise InvalidInput("no instances given: a DICOM or FHIR result refers to its study")
    for number, ds in enumerate(sources, start=1):
        missing = [k for k in _REQUIRED_KEYWORDS if not str(ds.get(k) or "")]
        if missing:
            raise InvalidInput(
                f"instance {number} of the study lacks {', '.join(missing)}, which a result "
                "object needs to refer to it"
            )
    return [header(ds) for ds in sources]


def identity_values(sources: Iterable[Dataset]) -> set[str]:
    """The identity values of the sources (names, ids, dates of birth), for scrubbing."""
    values: set[str] = set()
    for ds in sources:
        for keyword in _IDENTITY_KEYWORDS:
            value = ds.get(keyword)
            if value is None:
                continue
            items = value if isinstance(value, pydicom.multival.MultiValue) else [value]
            for item in items:
                text = str(item)
                if len(text) >= 2:
                    values.add(text)
                    # Person names also appear component by component and with spaces.
                    values.update(
                        part for part in text.replace("=", "^").split("^") if len(part) >= 2
                    )
    return values


def scrub(text: str, sources: Iterable[Dataset], limit: int = 500) -> str:
    """``text`` (e.g. a foreign exception's message) with the sources' identity values
    replaced, cut to ``limit`` characters."""
    for value in sorted(identity_values(sources), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text if len(text) <= limit else text[:limit] + "..."


def encode(ds: Dataset) -> bytes:
    """DICOM Part 10 bytes (preamble, file meta, data set)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def first_series_number(sources: Sequence[Dataset]) -> int:
    """A series number after the sources' own: the result series are numbered from here."""
    numbers = []
    for ds in sources:
        try:
            numbers.append(int(ds.get("SeriesNumber") or 0))
        except (TypeError, ValueError):
            continue
    return max([0, *numbers]) + 1


def truncate(text: str, limit: int) -> str:
    """``text`` cut to a VR's length limit (e.g. LO: 64 characters)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
