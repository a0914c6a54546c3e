"""Result documents' UIDs from the request's uid_seed (services/gateway/reports/uids.py): the
same seed repeats every UID and FHIR id of the same result, another seed or none does not."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from io import BytesIO

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from services.cli.samples import mr_head_series, pediatric_chest
from services.common.grids import Segmentation, VolumeGrid
from services.common.results import (
    Assessment,
    CodedConcept,
    EncodedObject,
    Finding,
    Measurement,
    ModelRef,
    OutputOptions,
    StudyResult,
    TriagePriority,
)
from services.gateway.reports import build_outputs, refusal_outputs, uids

ALL = OutputOptions(dicom_sr=True, dicom_seg=True, dicom_heatmap=True, fhir=True)
PNEUMONIA = CodedConcept(code="233604007", coding_scheme="SCT", display_name="Pneumonia")
BRAIN_VOLUME = CodedConcept(code="118565006", coding_scheme="SCT", display_name="Brain volume")
SHAPE, SPACING = (6, 16, 16), (2.0, 1.5, 1.5)  # slices, rows, cols; mm in the same order


def _expected(seed: str, n: int) -> str:
    return f"2.25.{int.from_bytes(hashlib.sha256(f'{seed}/{n}'.encode()).digest()[:16], 'big')}"


def _chest() -> tuple[list[Dataset], StudyResult]:
    rows = cols = 32
    source = pydicom.dcmread(BytesIO(pediatric_chest(np.full((rows, cols), 90, np.uint8))))
    overlay = BytesIO()
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[20:, :8] = (255, 0, 0, 200)
    Image.fromarray(rgba).save(overlay, format="PNG")
    uid = str(source.SOPInstanceUID)
    finding = Finding(PNEUMONIA, 0.8, 0.42, True, uid, heatmap_png=overlay.getvalue())
    result = StudyResult(
        request_id="r1",
        pipeline="cxr_pneumonia",
        model=ModelRef("cxr_pneumonia", "2"),
        assessment=Assessment([finding], TriagePriority.URGENT),
    )
    return [source], result


def _mr() -> tuple[list[Dataset], StudyResult]:
    volume = np.full(SHAPE, 200, np.uint16)
    sources = [pydicom.dcmread(BytesIO(data)) for data in mr_head_series(volume, SPACING)]
    slices, rows, cols = SHAPE
    affine = np.eye(4)
    affine[:3, 0] = [SPACING[2], 0, 0]
    affine[:3, 1] = [0, SPACING[1], 0]
    affine[:3, 2] = [0, 0, SPACING[0]]
    affine[:3, 3] = [-cols * SPACING[2] / 2, -rows * SPACING[1] / 2, -slices * SPACING[0] / 2]
    series = str(sources[0].SeriesInstanceUID)
    grid = VolumeGrid(series, SHAPE, SPACING, affine)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:5, 4:12, 4:12] = 1
    result = StudyResult(
        request_id="r2",
        pipeline="mri_brain_extraction",
        model=ModelRef("mri_brain_extraction", "1"),
        assessment=Assessment(
            [],
            TriagePriority.ROUTINE,
            measurements=[Measurement(BRAIN_VOLUME, 1.0, "mL", series)],
            segmentations=[Segmentation("brain", grid, mask)],
        ),
    )
    return sources, result


@pytest.fixture(scope="module", params=["chest", "mr"])
def study(request: pytest.FixtureRequest) -> tuple[list[Dataset], StudyResult]:
    return _chest() if request.param == "chest" else _mr()


def _identifiers(outputs: Sequence[EncodedObject]) -> list[tuple[str, list[str]]]:
    """Per document: every UI value (data set and file meta, nested ones included) or every
    FHIR fullUrl, in order."""
    found = []
    for o in outputs:
        if o.media_type == "application/dicom":
            ds = pydicom.dcmread(BytesIO(o.data))
            values = [str(e.value) for e in ds.iterall() if e.VR == "UI"]
            values += [str(e.value) for e in ds.file_meta if e.VR == "UI"]
        else:
            values = [e["fullUrl"] for e in json.loads(o.data)["entry"]]
        found.append((o.name, values))
    return found


def _made(outputs: Sequence[EncodedObject]) -> set[str]:
    """The SOP Instance and Series Instance UIDs of the documents made."""
    made = set()
    for o in outputs:
        if o.media_type == "application/dicom":
            ds = pydicom.dcmread(BytesIO(o.data))
            made |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)}
    return made


def test_the_seeded_generator_counts_up_from_the_seed() -> None:
    with uids.seeded("study-42:run.1"):
        first, second = uids.uid(), uids.uid()
        fhir_id = uids.uuid()
    assert (first, second) == (_expected("study-42:run.1", 0), _expected("study-42:run.1", 1))
    assert len(first) <= 64  # a UID's longest (PS3.5 9.1)
    assert (fhir_id.version, fhir_id.variant) == (8, uuid.RFC_4122)  # derived, not random
    # Outside the block and without a seed: random again.
    assert uids.uid() != uids.uid()
    with uids.seeded(""):
        assert not uids.is_seeded()
        assert uids.uid() != first


def test_each_build_counts_from_zero_and_nesting_restores() -> None:
    with uids.seeded("a"):
        assert uids.uid() == _expected("a", 0)
        with uids.seeded("b"):
            assert uids.uid() == _expected("b", 0)
        assert uids.uid() == _expected("a", 1)
    with uids.seeded("a"):
        assert uids.uid() == _expected("a", 0)


@pytest.mark.parametrize("seed", ["x" * 129, "with space", "slash/", "ümlaut", "a\nb"])
def test_a_seed_outside_its_alphabet_is_a_bug_here(seed: str) -> None:
    with pytest.raises(ValueError, match="1 to 128"), uids.seeded(seed):
        pass


def test_the_same_seed_repeats_every_identifier(
    study: tuple[list[Dataset], StudyResult],
) -> None:
    sources, result = study
    once = build_outputs(sources, result, ALL, uid_seed="acc-123:T1")
    again = build_outputs(sources, result, ALL, uid_seed="acc-123:T1")
    assert _identifiers(once) == _identifiers(again)
    # The SR's, SEG's and SC's own UIDs (and the SEG's Dimension Organization UID, which
    # highdicom makes itself) all derive from the seed.
    generated = {
        v
        for _, values in _identifiers(once)
        for v in values
        if not v.startswith("urn:uuid:")
        and v not in {str(e.value) for ds in sources for e in ds.iterall() if e.VR == "UI"}
    }
    derived = {_expected("acc-123:T1", n) for n in range(64)}
    for value in generated:
        standard = value.startswith("1.2.840.10008.")  # SOP classes, transfer syntaxes
        implementation = value.startswith("1.2.826.0.1.3680043.9.7433.")  # highdicom's class
        device = value.startswith("2.25.") and value not in derived  # Context.device_uid
        assert value in derived or standard or implementation or device, value
    assert _made(once) <= derived
    assert [o.sop_instance_uid for o in once] == [o.sop_instance_uid for o in again]


def test_another_seed_or_none_gives_other_identifiers(
    study: tuple[list[Dataset], StudyResult],
) -> None:
    sources, result = study
    seeded = _made(build_outputs(sources, result, ALL, uid_seed="one"))
    other = _made(build_outputs(sources, result, ALL, uid_seed="two"))
    random_1 = _made(build_outputs(sources, result, ALL))
    random_2 = _made(build_outputs(sources, result, ALL))
    assert seeded and not seeded & other
    assert not random_1 & random_2 and not random_1 & seeded
    fhir = [o for o in build_outputs(sources, result, OutputOptions(fhir=True), uid_seed="one")] + [
        o for o in build_outputs(sources, result, OutputOptions(fhir=True), uid_seed="two")
    ]
    first, second = (_identifiers([o])[0][1] for o in fhir)
    assert not set(first) & set(second)


def test_a_refusal_report_is_seeded_too() -> None:
    sources, _ = _chest()
    options = OutputOptions(dicom_sr=True, fhir=True)

    def build(seed: str) -> list[EncodedObject]:
        return refusal_outputs(
            sources, "cxr_pneumonia", "outside intended use.", options, uid_seed=seed
        )

    assert _identifiers(build("r-1")) == _identifiers(build("r-1"))
    assert build("r-1")[0].sop_instance_uid != build("r-2")[0].sop_instance_uid
    assert build("")[0].sop_instance_uid != build("")[0].sop_instance_uid
