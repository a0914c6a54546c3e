"""A result that supersedes an earlier one (late instances re-opened the study): its SR names
the earlier SRs in its Predecessor Documents Sequence (PS3.3 C.17.2), built by the gateway's
own report builder from the documents' bytes; requests naming anything else are refused."""

from __future__ import annotations

import asyncio
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from services.api.imaging.v1 import gateway_pb2
from services.common.convert import study_request
from services.common.errors import InvalidInput, NoMatchingPipeline
from services.common.images import DecodedImage, ImageAttributes
from services.common.results import (
    Assessment,
    CodedConcept,
    Finding,
    ModelRef,
    OutputOptions,
    Refusal,
    StudyRequest,
    StudyResult,
    TriagePriority,
)
from services.gateway.core import (
    MAX_PREDECESSOR_BYTES,
    MAX_PREDECESSORS,
    Limits,
    StudyAnalyzer,
    check_predecessor_study,
    predecessor_studies,
)
from services.gateway.reporting import DocumentReporter

CHEST = Path(__file__).resolve().parents[2].parent / "shared/data/dicom/pydicom-data/RG1_UNCR.dcm"
SR_ONLY = OutputOptions(dicom_sr=True)
PNEUMONIA = CodedConcept(code="233604007", coding_scheme="SCT", display_name="Pneumonia")


@pytest.fixture(scope="module")
def chest() -> bytes:
    if not CHEST.exists():
        pytest.fail(f"{CHEST} not found; shared data must sit beside the repo")
    return CHEST.read_bytes()


def _uid_of(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _result(instance: bytes) -> StudyResult:
    uid = _uid_of(instance)
    return StudyResult(
        request_id="req-1",
        pipeline="cxr_pneumonia",
        model=ModelRef("cxr_pneumonia", "2"),
        assessment=Assessment([Finding(PNEUMONIA, 0.83, 0.5, True, uid)], TriagePriority.URGENT),
    )


def _sr(instance: bytes, predecessors: tuple[bytes, ...] = (), seed: str = "") -> bytes:
    [document] = DocumentReporter(version="1.0").outputs(
        [instance], _result(instance), SR_ONLY, uid_seed=seed, predecessors=predecessors
    )
    assert document.kind == "dicom_sr"
    return document.data


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def _encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _image_headers(instance: bytes) -> bytes:
    """The image without its pixels (a small non-SR object)."""
    return _encode(pydicom.dcmread(BytesIO(instance), stop_before_pixels=True))


def _key_objects(sr: bytes) -> bytes:
    """The SR recast as a Key Object Selection document: the SR family's SOP class, not SR."""
    ds = _read(sr)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = KeyObjectSelectionDocumentStorage
    ds.Modality = "KO"
    return _encode(ds)


def _other_study(instance: bytes) -> bytes:
    """The instance moved to a study of its own."""
    ds = _read(instance)
    ds.StudyInstanceUID = generate_uid()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _names(sr: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of each predecessor the SR names."""
    return [
        (
            str(study.StudyInstanceUID),
            str(series.SeriesInstanceUID),
            str(sop.ReferencedSOPClassUID),
            str(sop.ReferencedSOPInstanceUID),
        )
        for study in sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def test_second_sr_names_the_first_as_its_predecessor(chest: bytes) -> None:
    first = _sr(chest, seed="first")
    second = _sr(chest, (first,), seed="second")
    one, two = _read(first), _read(second)
    assert "PredecessorDocumentsSequence" not in one
    assert _names(two) == [
        (
            str(one.StudyInstanceUID),
            str(one.SeriesInstanceUID),
            str(one.SOPClassUID),
            str(one.SOPInstanceUID),
        )
    ]
    assert two.SOPInstanceUID != one.SOPInstanceUID
    assert two.StudyInstanceUID == one.StudyInstanceUID
    # A predecessor of the predecessor is not carried over: each SR names its own.
    third = _read(_sr(chest, (second,), seed="third"))
    assert [name[3] for name in _names(third)] == [str(two.SOPInstanceUID)]


def test_refusal_sr_names_its_predecessor(chest: bytes) -> None:
    first = _sr(chest)
    [document] = DocumentReporter(version="1.0").refusal(
        [chest],
        "cxr_pneumonia",
        Refusal("OUTSIDE_INTENDED_USE", "outside the intended use."),
        SR_ONLY,
        predecessors=(first,),
    )
    assert [name[3] for name in _names(_read(document.data))] == [_uid_of(first)]


def _analyzer() -> StudyAnalyzer:
    """An analyzer whose admission alone is used (no pipeline named: no backend is asked)."""
    nothing = cast(Any, None)
    return StudyAnalyzer(
        nothing, nothing, nothing, nothing, nothing, Limits(10, 1 << 30, 1 << 30), 4
    )


def test_predecessor_srs_are_admitted(chest: bytes) -> None:
    first = _sr(chest)
    study = str(_read(chest).StudyInstanceUID)
    assert predecessor_studies([first, first]) == [study, study]
    check_predecessor_study([first], study)
    assert predecessor_studies([]) == []
    request = StudyRequest([chest], predecessors=(first,) * MAX_PREDECESSORS)
    assert _analyzer().admit(request).predecessors == request.predecessors


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda chest, sr: [_image_headers(chest)], "predecessor document 0 is not a DICOM SR"),
        (lambda chest, sr: [sr, _key_objects(sr)], "predecessor document 1 is not a DICOM SR"),
        (lambda chest, sr: [sr, b"not dicom at all"], "predecessor document 1 is not a readable"),
        (lambda chest, sr: [sr] * (MAX_PREDECESSORS + 1), f"at most {MAX_PREDECESSORS}"),
        (
            lambda chest, sr: [sr + b"\0" * MAX_PREDECESSOR_BYTES],
            f"the limit is {MAX_PREDECESSOR_BYTES}",
        ),
    ],
    ids=["image", "key-objects", "not-dicom", "too-many", "too-large"],
)
def test_admission_refuses_what_is_not_a_predecessor(chest: bytes, make: Any, says: str) -> None:
    documents = tuple(make(chest, _sr(chest)))
    with pytest.raises(InvalidInput, match=says) as refused:
        predecessor_studies(documents)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    # The gateway refuses it from the header alone (admit), before the study takes a slot.
    with pytest.raises(InvalidInput, match=says):
        _analyzer().admit(StudyRequest([chest], predecessors=documents))


def test_predecessor_of_another_study_is_refused(chest: bytes) -> None:
    elsewhere = _other_study(chest)
    foreign = _sr(elsewhere)
    study = str(_read(chest).StudyInstanceUID)
    # Once the study's own UID is known (after decoding) ...
    with pytest.raises(InvalidInput, match="predecessor document 0 is of another study") as err:
        check_predecessor_study([foreign], study)
    # ... quoting no value of either study.
    assert study not in str(err.value)
    assert str(_read(foreign).StudyInstanceUID) not in str(err.value)
    # ... and in the reporting step too.
    with pytest.raises(InvalidInput, match="of another study"):
        _sr(chest, (foreign,))


class _Decoder:
    """Every instance decodes to a tiny image of the given study."""

    def __init__(self, study_uid: str) -> None:
        self._study = study_uid

    async def decode(self, dicom: bytes, request_id: str) -> DecodedImage:
        attributes = ImageAttributes(study_instance_uid=self._study)
        return DecodedImage(np.zeros((1, 4, 4, 1), np.uint16), attributes)


class _NoPipeline:
    """Routing refuses every study: an analysis that gets this far passed the study check."""

    def route(self, attributes: Any) -> Any:
        raise NoMatchingPipeline("no pipeline (test)")


def test_analysis_checks_the_predecessors_study_once_decoded(chest: bytes) -> None:
    study = str(_read(chest).StudyInstanceUID)
    own, foreign = _sr(chest), _sr(_other_study(chest))
    nothing = cast(Any, None)
    analyzer = StudyAnalyzer(
        cast(Any, _NoPipeline()),
        _Decoder(study),
        nothing,
        nothing,
        nothing,
        Limits(10, 1 << 30, 1 << 30),
        4,
    )
    with pytest.raises(InvalidInput, match="predecessor document 1 is of another study"):
        asyncio.run(analyzer.analyze(StudyRequest([chest], predecessors=(own, foreign))))
    with pytest.raises(NoMatchingPipeline):  # past the check
        asyncio.run(analyzer.analyze(StudyRequest([chest], predecessors=(own,))))


def test_wire_predecessor_documents_become_the_requests(chest: bytes) -> None:
    first = _sr(chest)
    whole = gateway_pb2.AnalyzeRequest(instances=[chest], predecessor_documents=[first])
    header = gateway_pb2.AnalyzeHeader(predecessor_documents=[first, first])
    assert study_request(whole, [chest], "r").predecessors == (first,)
    assert study_request(header, [], "r").predecessors == (first, first)
    assert study_request(gateway_pb2.AnalyzeHeader(), [], "r").predecessors == ()
