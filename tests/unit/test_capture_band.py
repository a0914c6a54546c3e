"""The heatmap Secondary Capture says its status and "not a diagnosis" in its pixels and its
Series Description, for a person looking at it in a PACS without the header; dciodvfy still
finds no error in it."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from services.cli.samples import new_instance
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    CodedConcept,
    Finding,
    FindingStatus,
    ModelRef,
    OutputOptions,
    StudyResult,
    TriagePriority,
)
from services.gateway.reports import build_outputs, capture

PNEUMONIA = CodedConcept(code="233604007", coding_scheme="SCT", display_name="Pneumonia")
TUMOUR = CodedConcept(
    code="254837009", coding_scheme="SCT", display_name="Malignant tumor of breast"
)


def _source(rows: int, cols: int) -> Dataset:
    """A CR with native pixels, dark on the left to bright on the right (the capture
    composites over them)."""
    ds = new_instance(ComputedRadiographyImageStorage)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "PID-12345"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ramp = np.linspace(0, 255, cols).astype(np.uint8)
    ds.PixelData = np.ascontiguousarray(np.tile(ramp, (rows, 1))).tobytes()
    return ds


def _overlay(rows: int, cols: int) -> bytes:
    """Transparent but for a red patch low in the picture (below any band)."""
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[rows * 3 // 4 :, : cols // 4] = (255, 0, 0, 200)
    buffer = BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def _capture(source: Dataset, finding: Finding) -> Dataset:
    result = StudyResult(
        request_id="r",
        pipeline="cxr_pneumonia",
        model=ModelRef("cxr_pneumonia", "2"),
        assessment=Assessment([finding], TriagePriority.ROUTINE),
    )
    [image] = build_outputs([source], result, OutputOptions(dicom_heatmap=True))
    return pydicom.dcmread(BytesIO(image.data))


def _dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy not found: install the Debian package dicom3tools")
    path = tmp_path / "sc.dcm"
    path.write_bytes(data)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_the_status_and_not_a_diagnosis_are_burned_in_and_in_the_series_description(
    tmp_path: Path,
) -> None:
    source = _source(256, 200)
    png = _overlay(256, 200)
    finding = Finding(PNEUMONIA, 0.97, 0.42, True, str(source.SOPInstanceUID), heatmap_png=png)
    sc = _capture(source, finding)
    assert sc.SeriesDescription == "POSITIVE - not a diagnosis - AI heatmap Pneumonia"
    assert (sc.Rows, sc.Columns) == (256, 200)  # the band is over the picture, not above it
    pixels = sc.pixel_array
    plain, _ = capture.composite(source, png)
    differs = np.flatnonzero(np.any(pixels != plain, axis=(1, 2)))
    band = int(differs.max()) + 1
    assert 10 < band < 60, band  # a band of legible lines at the top, no more
    assert set(differs) == set(range(band))  # every row of it differs, nothing below does
    top = pixels[:band]
    assert (top == 0).all(axis=-1).mean() > 0.5  # dark paper ...
    assert (top >= 200).all(axis=-1).sum() > 100  # ... and light ink: text
    np.testing.assert_array_equal(pixels[band:], plain[band:])
    assert pixels[-1, 0, 0] > pixels[-1, 0, 1]  # the heatmap is still there below it
    assert "burned-in text" in sc.DerivationDescription
    assert sc.BurnedInAnnotation == "NO"  # the band holds no identity (see capture.py)
    assert _dciodvfy_errors(sc_bytes(sc), tmp_path) == []


def sc_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_band_says_which_status_and_a_long_name_never_cuts_it_off() -> None:
    source = _source(200, 256)
    caveat = Caveat(CaveatReason.OUTSIDE_INTENDED_USE, "patient age outside 18-90", "x")
    finding = Finding(
        TUMOUR,
        0.9,
        0.5,
        False,
        str(source.SOPInstanceUID),
        heatmap_png=_overlay(200, 256),
        status=FindingStatus.INDETERMINATE,
        caveats=(caveat,),
    )
    description = capture.series_description(finding)
    assert description.startswith("INDETERMINATE - not a diagnosis") and len(description) <= 64
    assert capture.status_texts(finding)[0] == "Malignant tumor of breast: INDETERMINATE"
    # Different words burn different pixels: the band is the status's, not a fixed stamp.
    positive = Finding(TUMOUR, 0.9, 0.5, True, "x")
    indeterminate_band = capture.text_band(256, capture.status_texts(finding))
    positive_band = capture.text_band(256, capture.status_texts(positive))
    assert indeterminate_band.shape == positive_band.shape
    assert not np.array_equal(indeterminate_band, positive_band)


def test_a_tiny_image_is_scaled_up_so_its_band_stays_legible(tmp_path: Path) -> None:
    source = _source(28, 28)
    finding = Finding(
        PNEUMONIA, 0.2, 0.42, False, str(source.SOPInstanceUID), heatmap_png=_overlay(28, 28)
    )
    sc = _capture(source, finding)
    assert (sc.Rows, sc.Columns) == (256, 256)
    assert sc.SeriesDescription.startswith("NEGATIVE - not a diagnosis")
    pixels = sc.pixel_array
    assert (pixels[:10] == 0).all(axis=-1).mean() > 0.5  # the band at the top
    below = pixels[128, :, 0].astype(int)  # the image, under the band: dark to bright
    assert below[10] < 60 and below[-10] > 200
    assert _dciodvfy_errors(sc_bytes(sc), tmp_path) == []
