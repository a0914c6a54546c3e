"""Tests for services.decoder.core against the shared real-DICOM corpus and synthetic files."""

from __future__ import annotations

import csv
import gzip
import logging
import random
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from services.common.errors import InvalidInput, TooLarge, UnsupportedInput
from services.decoder.core import DecodeLimits, decode_instance

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
MANIFEST = CORPUS / "MANIFEST.csv"
if not MANIFEST.is_file():  # fail loudly rather than silently collecting nothing
    raise FileNotFoundError(f"DICOM test corpus not found at {MANIFEST}")

# Transfer syntaxes the decoder must handle with pydicom + pylibjpeg (brief's list).
COVERED_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
}
# Keeps the run short: every file is decoded twice (ours + reference). Today the largest
# matching corpus file is ~7 MB, so this cap excludes nothing; it guards future additions.
MAX_FILE_BYTES = 30 * 2**20
PATIENT_NAME = "Zyxwvut^Quixotic"
DEFAULT_LIMITS = DecodeLimits()


def _manifest_rows() -> list[dict[str, str]]:
    with MANIFEST.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        r
        for r in rows
        if r["transfer_syntax"] in COVERED_SYNTAXES
        and "ok" in (r["dec_pylibjpeg"], r["dec_native_or_rle"])
        and int(r["size"]) <= MAX_FILE_BYTES
    ]


DECODABLE = _manifest_rows()


def _corpus_bytes(relative: str) -> bytes:
    return (CORPUS / relative).read_bytes()


def _expected_4d(row: dict[str, str]) -> tuple[int, int, int, int]:
    """The manifest's pydicom shape, rewritten as (frames, rows, cols, samples)."""
    shape = tuple(int(v) for v in row["decoded_shape"].strip("()").split(",") if v.strip())
    multi_frame = int(row["frames"] or 1) > 1
    if len(shape) == 4:
        return (shape[0], shape[1], shape[2], shape[3])
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2], 1) if multi_frame else (1, *shape)
    return (1, shape[0], shape[1], 1)


def _synthetic(rows: int = 16, cols: int = 16) -> Dataset:
    """A small uncompressed CT with a patient name, written fresh by pydicom."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "ID-Quixotic-42"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (np.arange(rows * cols, dtype="<u2") % 4096).tobytes()
    return ds


def _to_bytes(ds: Dataset, *, file_format: bool = True) -> bytes:
    buf = BytesIO()
    if file_format:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:  # bare dataset: no preamble, no file meta
        del ds.file_meta
        pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


# --- corpus round trip -------------------------------------------------------------------


@pytest.mark.parametrize("row", DECODABLE, ids=[r["path"] for r in DECODABLE])
def test_corpus_file_decodes_like_pydicom(row: dict[str, str]) -> None:
    image = decode_instance(_corpus_bytes(row["path"]), DecodeLimits())

    assert image.pixels.shape == _expected_4d(row)
    assert image.pixels.dtype == np.dtype(row["decoded_dtype"]).newbyteorder("=")
    reference = pydicom.dcmread(CORPUS / row["path"], force=row["read"] != "ok").pixel_array
    np.testing.assert_array_equal(image.pixels, reference.reshape(image.pixels.shape))
    assert image.attributes.transfer_syntax_uid == row["transfer_syntax"]


def test_parametrisation_covers_the_corpus() -> None:
    assert len(DECODABLE) >= 200  # guards against a manifest/filter change emptying the test


LOSSLESS_TWINS = [
    ("pydicom-data/RG1_J2KR.dcm", "pydicom-data/RG1_UNCR.dcm"),
    ("pydicom-data/RG3_J2KR.dcm", "pydicom-data/RG3_UNCR.dcm"),
    ("pydicom-data/MR2_J2KR.dcm", "pydicom-data/MR2_UNCR.dcm"),
    *(
        (f"cornerstone/CTImage.dcm_{variant}.dcm", "cornerstone/CTImage.dcm")
        for variant in (
            "JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90",
            "JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57",
            "JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70",
            "RLELosslessTransferSyntax_1.2.840.10008.1.2.5",
            "BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2",
            "DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99",
        )
    ),
    ("pydicom-testfiles/MR_small_RLE.dcm", "pydicom-testfiles/MR_small.dcm"),
    ("pydicom-testfiles/MR_small_jp2klossless.dcm", "pydicom-testfiles/MR_small.dcm"),
]


@pytest.mark.parametrize(("compressed", "uncompressed"), LOSSLESS_TWINS)
def test_lossless_file_equals_uncompressed_twin(compressed: str, uncompressed: str) -> None:
    packed = decode_instance(_corpus_bytes(compressed), DecodeLimits())
    plain = decode_instance(_corpus_bytes(uncompressed), DecodeLimits())

    assert packed.attributes.transfer_syntax_uid != plain.attributes.transfer_syntax_uid
    assert packed.pixels.dtype == plain.pixels.dtype
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


# --- bad input ---------------------------------------------------------------------------


def _reason(data: bytes, error: type[Exception], limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(error) as caught:
        decode_instance(data, limits)
    assert type(caught.value) is error  # not a parent/child class by accident
    return str(caught.value)


def test_empty_bytes() -> None:
    assert "empty" in _reason(b"", InvalidInput)


def test_random_bytes() -> None:
    noise = random.Random(1234).randbytes(4096)
    assert "not a DICOM file" in _reason(noise, InvalidInput)


def test_gzipped_dicom() -> None:
    reason = _reason(gzip.compress(_to_bytes(_synthetic())), InvalidInput)
    assert "gzip-compressed; decompress before sending" in reason


def test_dicom_without_pixel_data() -> None:
    ds = _synthetic()
    del ds.PixelData
    reason = _reason(_to_bytes(ds), InvalidInput)
    assert "contains no Pixel Data" in reason
    assert "CT Image Storage" in reason


def test_truncated_pixel_data() -> None:
    data = _to_bytes(_synthetic(16, 16))  # Pixel Data is the last element: 512 bytes
    reason = _reason(data[:-100], InvalidInput)
    assert "truncated" in reason
    assert "expected 512 bytes" in reason and "got 412 bytes" in reason


def test_truncated_encapsulated_pixel_data() -> None:
    data = _corpus_bytes("pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    assert "truncated" in _reason(data[:-1000], InvalidInput)


def test_too_many_pixels() -> None:
    reason = _reason(_to_bytes(_synthetic(64, 64)), TooLarge, DecodeLimits(max_pixels=1000))
    assert "64x64" in reason and "4,096 pixel values" in reason and "limit is 1,000" in reason


def test_too_many_decoded_bytes() -> None:
    limits = DecodeLimits(max_decoded_bytes=4096)
    reason = _reason(_to_bytes(_synthetic(64, 64)), TooLarge, limits)
    assert "8,192 bytes decoded" in reason and "limit is 4,096 bytes" in reason


def test_too_many_encoded_bytes() -> None:
    reason = _reason(_to_bytes(_synthetic()), TooLarge, DecodeLimits(max_bytes=100))
    assert "limit is 100 bytes" in reason


def test_unknown_transfer_syntax() -> None:
    ds = _synthetic()
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.9999.1")
    buf = BytesIO()  # written as explicit little endian but labelled with a private syntax
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    reason = _reason(buf.getvalue(), UnsupportedInput)
    assert "1.2.826.0.1.3680043.9999.1" in reason and "not supported" in reason


def test_transfer_syntax_without_plugin() -> None:
    path = "cornerstone/CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm"
    reason = _reason(_corpus_bytes(path), UnsupportedInput)
    assert "1.2.840.10008.1.2.4.53" in reason and "Spectral Selection" in reason


def test_corrupt_compressed_stream() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"])
    buf = BytesIO()
    ds.save_as(buf)
    reason = _reason(buf.getvalue(), InvalidInput)
    assert "could not decode 1.2.840.10008.1.2.4.50" in reason
    assert len(reason) < 350  # codec message trimmed


# --- attributes --------------------------------------------------------------------------


def test_ct_attributes() -> None:
    a = decode_instance(_corpus_bytes("cornerstone/CTImage.dcm")).attributes
    assert (a.modality, a.photometric_interpretation) == ("CT", "MONOCHROME2")
    assert (a.rescale_slope, a.rescale_intercept) == (1.0, -1024.0)
    assert (a.window_center, a.window_width) == (40.0, 400.0)
    assert a.pixel_spacing == pytest.approx((0.675781, 0.675781))
    assert a.pixel_representation == 1 and a.bits_stored == 16
    assert a.sop_class_uid == CTImageStorage and a.number_of_frames == 1


def test_absent_rescale_and_window_use_defaults() -> None:
    a = decode_instance(_corpus_bytes("pydicom-data/RG1_J2KR.dcm")).attributes
    assert (a.rescale_slope, a.rescale_intercept) == (1.0, 0.0)
    ds = _synthetic()
    del ds.RescaleSlope, ds.RescaleIntercept
    b = decode_instance(_to_bytes(ds)).attributes
    assert (b.rescale_slope, b.rescale_intercept) == (1.0, 0.0)
    assert (b.window_center, b.window_width, b.pixel_spacing) == (None, None, None)


def test_multi_valued_window_takes_first() -> None:
    a = decode_instance(_corpus_bytes("pydicom-data/MR-SIEMENS-DICOM-WithOverlays.dcm"))
    assert (a.attributes.window_center, a.attributes.window_width) == (450.0, 790.0)


def test_monochrome1_cr_is_preserved() -> None:
    image = decode_instance(_corpus_bytes("pydicom-data/RG1_J2KR.dcm"))
    assert image.attributes.modality == "CR"
    assert image.attributes.photometric_interpretation == "MONOCHROME1"
    assert image.attributes.body_part_examined == "CHEST"
    assert image.attributes.pixel_spacing is None  # the file says "0.000\\0.000"


def test_ybr_is_reported_as_rgb() -> None:
    image = decode_instance(_corpus_bytes("pydicom-testfiles/SC_ybr_full_422_uncompressed.dcm"))
    assert image.attributes.photometric_interpretation == "RGB"
    assert image.pixels.shape == (1, 100, 100, 3)


def test_imager_pixel_spacing_fallback() -> None:
    path = "pylibjpeg-data/JPEG2000Lossless/JPEG2KLossless_1s_1f_u_16_16.dcm"
    assert decode_instance(_corpus_bytes(path)).attributes.pixel_spacing == (0.4, 0.4)


def test_enhanced_ct_reads_shared_functional_groups() -> None:
    image = decode_instance(_corpus_bytes("pydicom-data/eCT_Supplemental.dcm"))
    a = image.attributes
    assert image.pixels.shape[0] == a.number_of_frames == 2
    assert (a.rescale_slope, a.rescale_intercept) == (1.0, -1024.0)
    assert (a.window_center, a.window_width) == (49.0, 102.0)
    assert a.pixel_spacing == pytest.approx((0.388672, 0.388672))


def test_big_endian_comes_back_native() -> None:
    path = "cornerstone/CTImage.dcm_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm"
    image = decode_instance(_corpus_bytes(path))
    assert image.pixels.dtype == np.dtype("int16") and image.pixels.dtype.isnative


def test_stored_values_are_not_rescaled() -> None:
    ds = _synthetic()
    image = decode_instance(_to_bytes(ds))
    stored = np.frombuffer(ds.PixelData, dtype="<u2").reshape(1, 16, 16, 1)
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, stored)


# --- privacy -----------------------------------------------------------------------------


def test_logs_and_errors_never_contain_the_patient_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = decode_instance(_to_bytes(_synthetic()))
        seen.append(repr(image.attributes))
        decode_instance(_to_bytes(_synthetic(), file_format=False))  # logs the force=True read
        for bad in (_to_bytes(_synthetic())[:-100], _to_bytes(_synthetic())[:300]):
            with pytest.raises(InvalidInput) as error:
                decode_instance(bad)
            seen.append(str(error.value))
    seen += [str(w.message) for w in caught]

    assert "force=True" in caplog.text  # the warning path really ran
    for text in (caplog.text, *seen):
        assert "Quixotic" not in text
