"""Quick-look PNGs: the heatmap over the image with its colour bar, the mask over the middle
slice; opaque RGB a person can judge without a viewer."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    MRImageStorage,
    generate_uid,
)

from services.api.imaging.v1 import findings_pb2, gateway_pb2
from services.cli import quicklook
from services.cli.main import write_outputs
from services.cli.samples import new_instance
from services.common import tensors


def _dataset(pixels: np.ndarray, sop_class: str = ComputedRadiographyImageStorage) -> Dataset:
    ds = new_instance(UID(sop_class))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "PID-12345"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _halves(rows: int, cols: int) -> np.ndarray:
    """Dark left half, bright right half."""
    pixels = np.full((rows, cols), 20, np.uint8)
    pixels[:, cols // 2 :] = 230
    return pixels


def _overlay(rows: int, cols: int) -> bytes:
    """Like the postprocessor's: transparent, alpha growing to a peak in the top-left quarter."""
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[: rows // 4, : cols // 4] = (255, 0, 0, 150)
    rgba[rows // 4 : rows // 2, : cols // 4] = (0, 255, 255, 50)
    buffer = BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def test_display_gray_applies_the_window_and_inverts_monochrome1() -> None:
    ds = _dataset(np.array([[0, 1000], [2000, 4095]], np.uint16))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = 1000, 1000  # 500 .. 1500
    gray = quicklook.display_gray(ds)
    assert gray[0, 0] == 0 and gray[1, 0] == 255 and gray[1, 1] == 255
    assert 120 <= gray[0, 1] <= 135  # the window's centre: mid grey
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert quicklook.display_gray(ds)[0, 0] == 255


def test_heatmap_quicklook_is_the_image_with_heat_a_colour_bar_and_a_band() -> None:
    gray = _halves(300, 200)
    picture = quicklook.heatmap_quicklook(gray, _overlay(150, 100), ["Pneumonia: POSITIVE"])
    assert picture.mode == "RGB"  # opaque
    rows, cols = quicklook.display_size(300, 200)
    assert (rows, cols) == (384, 256)  # scaled up to the minimum long side, aspect kept
    width, height = picture.size
    assert width == cols + quicklook.PANEL_WIDTH
    band = height - rows
    assert 10 < band < 60
    pixels = np.asarray(picture).astype(int)
    image = pixels[band:, :cols]
    # Beyond the heat: the image's own grey, dark left and bright right.
    for y, x, value in ((rows - 5, 5, 20), (rows - 5, cols - 5, 230)):
        assert abs(image[y, x, 0] - value) <= 3 and image[y, x, 0] == image[y, x, 2]
    # At the heat's peak: red over the dark image; below it the weaker heat is blue-cyan.
    peak = image[rows // 8, cols // 8]
    assert peak[0] > 120 and peak[0] > peak[1] + 80 and peak[0] > peak[2] + 80
    weak = image[rows * 3 // 8, cols // 8]
    assert weak[2] > weak[0] + 30
    # The colour bar: red at its top (the peak), blue at its bottom (0), on a dark panel.
    x = cols + quicklook.BAR_LEFT + quicklook.BAR_WIDTH // 2
    top = pixels[band + quicklook.BAR_MARGIN + 1, x]
    bottom = pixels[height - quicklook.BAR_MARGIN - 2, x]
    assert top[0] > 200 and top[1] < 60 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60 and bottom[1] < 60
    panel = pixels[band:, cols + quicklook.BAR_LEFT + quicklook.BAR_WIDTH + 2 :]
    assert (panel.max(axis=-1) > 200).sum() > 30  # its scale's labels


def test_mask_quicklook_fills_the_mask_over_the_slice() -> None:
    gray = np.full((40, 40), 100, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    picture = quicklook.mask_quicklook(gray, mask, ["brain mask"])
    assert picture.mode == "RGB" and picture.size[0] == quicklook.MIN_SIDE
    pixels = np.asarray(picture).astype(int)
    band = picture.size[1] - quicklook.MIN_SIDE
    inside = pixels[band + quicklook.MIN_SIDE // 2, quicklook.MIN_SIDE // 2]
    outside = pixels[band + 5, 5]
    assert list(outside) == [100, 100, 100]
    assert inside[0] > inside[1] + 50  # red over grey
    edge = pixels[band + quicklook.MIN_SIDE // 2, quicklook.MIN_SIDE // 4]  # x = 10/40
    assert list(edge) == list(quicklook.MASK_EDGE)


def test_write_outputs_draws_each_heatmap_over_its_own_image(tmp_path: Path) -> None:
    ds = _dataset(_halves(64, 64))
    response = gateway_pb2.AnalyzeResponse(pipeline="p", model=gateway_pb2.ModelRef(name="m"))
    response.findings.add(
        code="233604007",
        display_name="Pneumonia",
        probability=0.97,
        threshold=0.42,
        status=findings_pb2.FINDING_STATUS_POSITIVE,
        sop_instance_uid=str(ds.SOPInstanceUID),
        heatmap_png=_overlay(64, 64),
    )
    written = write_outputs(tmp_path, "study", response, [_bytes(ds)])
    look = tmp_path / "study.0.233604007.quicklook.png"
    assert look in written
    with Image.open(look) as opened:
        picture = opened.convert("RGB")
        assert opened.mode == "RGB"
    pixels = np.asarray(picture).astype(int)
    band = picture.size[1] - quicklook.MIN_SIDE
    assert pixels[-5, 5, 0] < 40 and pixels[-5, quicklook.MIN_SIDE - 5, 0] > 200  # the image
    document = (tmp_path / "study.findings.json").read_text()
    assert '"quicklookFile": "study.0.233604007.quicklook.png"' in document
    assert band > 0 and "SECRET" not in document


def test_a_volume_quicklook_is_the_mask_over_the_middle_slice(tmp_path: Path) -> None:
    slices, rows, cols = 5, 32, 32
    series, frame = generate_uid(), generate_uid()
    files = []
    for k in range(slices):
        # The middle slice (2) is bright on the left, the others bright on the right.
        values = np.arange(cols, dtype=np.uint16) * 10
        ramp = np.tile(values[::-1] if k == 2 else values, (rows, 1))
        ds = _dataset(ramp, MRImageStorage)
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.Modality = series, frame, "MR"
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        files.append(_bytes(ds))
    files.reverse()  # sent out of order
    mask = np.zeros((slices, rows, cols), np.uint8)
    mask[2, 8:24, 8:24] = 1  # only the middle slice has any
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    response = gateway_pb2.AnalyzeResponse(pipeline="brain", model=gateway_pb2.ModelRef(name="m"))
    seg = response.segmentations.add(label="brain", mask=tensors.to_proto(mask))
    seg.geometry.series_instance_uid = series
    seg.geometry.shape.extend(mask.shape)
    seg.geometry.spacing.extend([3.0, 1.0, 1.0])
    seg.geometry.affine.extend(affine.ravel().tolist())
    response.measurements.add(display_name="Brain volume", value=0.8, unit="mL")
    looks = quicklook.write_quicklooks(tmp_path, "mr", response, files)
    with Image.open(looks["brain"]) as opened:
        pixels = np.asarray(opened.convert("RGB")).astype(int)
    band = pixels.shape[0] - quicklook.MIN_SIDE
    image = pixels[band:]
    centre = image[quicklook.MIN_SIDE // 2, quicklook.MIN_SIDE // 2]
    assert centre[0] > centre[1] + 40  # the mask, in red
    # Outside the mask: the middle slice's own pixels (bright left), found by its position.
    row = image[5, :, 1]
    assert row[5] > row[-5] + 100 and (image[5, :, 0] == image[5, :, 1]).all()
    written = write_outputs(tmp_path / "w", "mr", response, files)
    assert tmp_path / "w" / "mr.seg-brain.quicklook.png" in written
    document = (tmp_path / "w" / "mr.findings.json").read_text()
    assert '"data"' not in document  # the mask's bytes stay out of the JSON
    assert '"quicklookFile": "mr.seg-brain.quicklook.png"' in document


def test_the_quicklook_of_an_undecodable_image_is_drawn_over_black(tmp_path: Path) -> None:
    response = gateway_pb2.AnalyzeResponse()
    response.findings.add(code="c", sop_instance_uid="1.2.3", heatmap_png=_overlay(64, 64))
    looks = quicklook.write_quicklooks(tmp_path, "s", response, [b"not dicom"])
    with Image.open(looks[0]) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert pixels[-5, 5].max() == 0


@pytest.mark.parametrize("rows,cols", [(28, 28), (3000, 1000), (500, 700)])
def test_display_size_keeps_the_aspect_within_bounds(rows: int, cols: int) -> None:
    out_rows, out_cols = quicklook.display_size(rows, cols)
    assert quicklook.MIN_SIDE <= max(out_rows, out_cols) <= quicklook.MAX_SIDE
    assert abs(out_rows / out_cols - rows / cols) < 0.01
    if quicklook.MIN_SIDE <= max(rows, cols) <= quicklook.MAX_SIDE:
        assert (out_rows, out_cols) == (rows, cols)
