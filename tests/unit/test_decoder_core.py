"""Tests for services.decoder.core: every pixel file of the shared corpus, bad input, limits.

Each of the 279 manifest rows with pixel data either decodes (shape and dtype as the manifest
says, pixels equal to a reference: pydicom + pylibjpeg where pydicom decodes it, python-gdcm's
own reader where only that reads it, and a lossless twin where neither does) or is refused
with a specific reason. python-gdcm's reader aborts the process on the 1-bit RLE files, so it
only ever runs in a subprocess here, and never on those files.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import random
import subprocess
import sys
import warnings
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import apply_color_lut
from pydicom.pixels import pixel_array as pydicom_pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from services.common.errors import InvalidInput, PlatformError, TooLarge, UnsupportedInput
from services.common.settings import DecodeLimits
from services.decoder.core import decode_instance, decodes_in_process

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
MANIFEST = CORPUS / "MANIFEST.csv"
if not MANIFEST.is_file():  # fail loudly rather than silently collecting nothing
    raise FileNotFoundError(f"DICOM test corpus not found at {MANIFEST}")

with MANIFEST.open(newline="") as _file:
    ROWS = {r["path"]: r for r in csv.DictReader(_file) if r["has_pixels"] == "1"}

try:
    import gdcm  # noqa: F401  (only whether it is installed; its reader runs in a subprocess)

    HAVE_GDCM = True
except ImportError:
    HAVE_GDCM = False

PATIENT_NAME = "Zyxwvut^Quixotic"
DEFAULT_LIMITS = DecodeLimits()

# Decoded by nobody, with the phrase their reason must contain.
REFUSED: dict[str, tuple[type[PlatformError], str]] = {
    "pydicom-testfiles/JPEG2000-embedded-sequence-delimiter.dcm": (
        InvalidInput,
        "JPEG 2000 codestream is corrupt or belongs to another image: frame 1 declares "
        "3,722,445,056 columns",
    ),
    "pydicom-testfiles/MR_truncated.dcm": (
        InvalidInput,
        "pixel data truncated: expected 8,192 bytes for the declared image geometry, got 8,130",
    ),
    "pydicom-testfiles/meta_missing_tsyntax.dcm": (
        InvalidInput,
        "no Rows element (and the file meta has no Transfer Syntax UID)",
    ),
    "pydicom-testfiles/nested_priv_SQ.dcm": (
        InvalidInput,
        "pixel data but no Rows element; it lacks the Image Pixel module",
    ),
}
# pydicom's plugins fail on these, python-gdcm's own reader (the reference) decodes them.
GDCM_DIRECT = (
    "cornerstone/CTImage.dcm_JPEGProcess10_12TransferSyntax_1.2.840.10008.1.2.4.55.dcm",
    "cornerstone/CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm",
    "pydicom-data/OT-PAL-8-face.dcm",
    "pydicom-testfiles/JPEG-lossy.dcm",
    "pydicom-testfiles/badVR.dcm",
    "pylibjpeg-data/JPEGExtended/RG2_JPLY.dcm",
)
# Of those, what needs python-gdcm's codecs here (the other two only need pydicom + numpy).
NEEDS_GDCM = frozenset(p for p in GDCM_DIRECT if "OT-PAL" not in p and "badVR" not in p)
# Neither pydicom nor python-gdcm decodes these; this decoder does. Reference: their twins.
OWN_DECODES = (
    "pydicom-data/liver_deflate.dcm",  # Deflated Image Frame Compression, 1 bit
    "pydicom-data/liver_nonbyte_aligned_deflate.dcm",
    "pydicom-data/liver_rle.dcm",  # RLE with 1 bit allocated (gdcm's reader aborts here)
    "pydicom-data/liver_nonbyte_aligned_rle.dcm",
    "pylibjpeg-data/JPEG2000Lossless/966.dcm",  # COM segment after the last tile-part
)
# pydicom's apply_color_lut reads OW palettes of big-endian files byte-swapped; their
# reference is their little-endian twin.
PYDICOM_PALETTE_WRONG = ("pydicom-data/OBXXXX1A_expb.dcm", "pydicom-data/OBXXXX1A_expb_2frame.dcm")
GDCM_READER_ABORTS = ("pydicom-data/liver_rle.dcm", "pydicom-data/liver_nonbyte_aligned_rle.dcm")
# Frames of files whose Number of Frames is unreadable ('1A'): inferred from the data length;
# its twin rtdose.dcm (same pixels, valid header) confirms 15.
EXPECTED_FRAMES = {"pydicom-testfiles/badVR.dcm": 15}

_CT = "cornerstone/CTImage.dcm"
_CT_LOSSLESS = (
    "BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2",
    "DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99",
    "JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90",
    "JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80",
    "JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70",
    "JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57",
    "LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1",
    "LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2",
    "RLELosslessTransferSyntax_1.2.840.10008.1.2.5",
)
_PD, _PT, _LJ = "pydicom-data/", "pydicom-testfiles/", "pylibjpeg-data/"
# Re-encodings of one image that must decode pixel-exact: the first of each group is the
# reference (uncompressed where the corpus has it). "*_dcmd"/"UNCI" files are the lossy
# files as decompressed by dcmtk/the data set's authors: our decode must match theirs.
TWIN_GROUPS: tuple[tuple[str, ...], ...] = (
    (_CT, *(f"{_CT}_{variant}.dcm" for variant in _CT_LOSSLESS)),
    tuple(f"dcm_qa_ts/{i}.dcm" for i in range(1, 10)),
    (f"{_PD}693_UNCR.dcm", f"{_PD}693_J2KR.dcm"),
    (f"{_PD}693_UNCI.dcm", f"{_PT}693_J2KI.dcm"),
    (
        f"{_PD}MR2_UNCR.dcm",
        f"{_PD}MR2_J2KR.dcm",
        f"{_LJ}JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
    ),
    (f"{_PD}MR2_UNCI.dcm", f"{_PD}MR2_J2KI.dcm"),
    (f"{_PD}RG1_UNCR.dcm", f"{_PD}RG1_J2KR.dcm"),
    (f"{_PD}RG3_UNCR.dcm", f"{_PD}RG3_J2KR.dcm"),
    (f"{_PD}US1_UNCR.dcm", f"{_PT}examples_jpeg2k.dcm"),  # YBR_RCT
    (f"{_PD}US1_UNCI.dcm", f"{_PD}US1_J2KI.dcm"),  # YBR_ICT
    (f"{_PD}JPEG2000_UNC.dcm", f"{_PT}JPEG2000.dcm"),
    (f"{_PD}OBXXXX1A.dcm", f"{_PD}OBXXXX1A_rle.dcm", f"{_PD}OBXXXX1A_expb.dcm"),
    (
        f"{_PD}OBXXXX1A_2frame.dcm",
        f"{_PD}OBXXXX1A_rle_2frame.dcm",
        f"{_PD}OBXXXX1A_expb_2frame.dcm",
    ),
    *(
        (
            f"{_PD}SC_rgb{suffix}.dcm",
            f"{_PD}SC_rgb_expb{suffix}.dcm",
            f"{_PT}SC_rgb_rle{suffix}.dcm",
        )
        for suffix in ("", "_16bit", "_2frame", "_16bit_2frame", "_32bit", "_32bit_2frame")
    ),
    (f"{_PD}SC_rgb.dcm", f"{_PD}SC_rgb_gdcm2k_uncompressed.dcm", f"{_PT}SC_rgb_gdcm_KY.dcm"),
    (f"{_PD}SC_rgb.dcm", f"{_PT}SC_rgb_jpeg_gdcm.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcr_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cr.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcyn1_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cy+n1.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcynp_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cy+np.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcyn2_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cy+n2.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcys2_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cy+s2.dcm"),
    (f"{_PD}SC_rgb_dcmtk_ebcys4_dcmd.dcm", f"{_PT}SC_rgb_dcmtk_+eb+cy+s4.dcm"),
    (f"{_PD}SC_ybr_full_uncompressed.dcm", f"{_PT}SC_ybr_full_422_uncompressed.dcm"),
    (f"{_PT}SC_rgb_jpeg_dcmd.dcm", f"{_PT}SC_rgb_jpeg.dcm", f"{_PT}SC_jpeg_no_color_transform.dcm"),
    (f"{_PD}color-px.dcm", f"{_PD}color-pl.dcm"),  # planar configuration 0 and 1
    (
        f"{_PD}emri_small.dcm",
        *(f"{_PD}emri_small_{v}.dcm" for v in ("RLE", "big_endian", "jpeg_2k_lossless")),
        f"{_PD}emri_small_jpeg_ls_lossless.dcm",
    ),
    (f"{_PD}gdcm-US-ALOKA-16.dcm", f"{_PD}gdcm-US-ALOKA-16_big.dcm"),
    (
        f"{_PD}liver.dcm",
        *(f"{_PD}liver_{v}.dcm" for v in ("deflate", "expb", "j2k", "rle")),
    ),
    (
        f"{_PD}liver_nonbyte_aligned.dcm",
        *(f"{_PD}liver_nonbyte_aligned_{v}.dcm" for v in ("deflate", "j2k", "rle")),
    ),
    (f"{_PT}liver_1frame.dcm", f"{_PT}liver_expb_1frame.dcm"),
    (
        f"{_PT}MR_small.dcm",
        *(
            f"{_PT}MR_small_{v}.dcm"
            for v in ("RLE", "bigendian", "expb", "implicit", "jp2klossless", "jpeg_ls_lossless")
        ),
        f"{_PT}MR_small_padded.dcm",
    ),
    (f"{_PT}rtdose.dcm", f"{_PT}rtdose_expb.dcm", f"{_PT}rtdose_rle.dcm", f"{_PT}badVR.dcm"),
    (f"{_PT}rtdose_1frame.dcm", f"{_PT}rtdose_expb_1frame.dcm", f"{_PT}rtdose_rle_1frame.dcm"),
    (f"{_PT}SC_rgb_small_odd.dcm", f"{_PT}SC_rgb_small_odd_big_endian.dcm"),
    (f"{_PD}JLSL_RGB_ILV0.dcm", f"{_PD}JLSL_RGB_ILV1.dcm", f"{_PD}JLSL_RGB_ILV2.dcm"),
    (f"{_LJ}JPEGLSLossless/RG2_JLSL.dcm", f"{_LJ}JPEGLosslessSV1/RG2_JPLL.dcm"),
    (f"{_LJ}JPEG2000Lossless/966_fixed.dcm", f"{_LJ}JPEG2000Lossless/966.dcm"),
    (
        f"{_CT}_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm",
        f"{_CT}_JPEGProcess10_12TransferSyntax_1.2.840.10008.1.2.4.55.dcm",
    ),
)
TWINS: dict[str, list[str]] = {}
for _group in TWIN_GROUPS:
    for _member in _group[1:]:
        TWINS.setdefault(_member, []).append(_group[0])

# The 120-frame clip: the pydicom reference (with its YBR conversion) takes ~10 s in full,
# so the reference is these frames.
CLIP = "pydicom-data/color3d_jpeg_baseline.dcm"
CLIP_FRAMES = (0, 59, 119)


def _corpus_bytes(relative: str) -> bytes:
    return (CORPUS / relative).read_bytes()


@cache
def _decoded_twin(relative: str) -> np.ndarray:
    return decode_instance(_corpus_bytes(relative)).pixels


def _expected_shape(row: dict[str, str], palette_samples: int) -> tuple[int, int, int, int]:
    """The manifest's geometry as (frames, rows, cols, samples), RGB for palettes."""
    frames = EXPECTED_FRAMES.get(row["path"]) or int(row["frames"] or 1)
    samples = palette_samples or int(row["spp"] or 1)
    shape = (frames, int(row["rows"]), int(row["cols"]), samples)
    if row["decoded_shape"]:  # pydicom's shape, where pydicom decodes it, agrees
        values = [int(v) for v in row["decoded_shape"].strip("()").split(",") if v.strip()]
        assert int(np.prod(values)) * (3 if palette_samples else 1) == int(np.prod(shape))
    return shape


def _expected_dtype(row: dict[str, str], ds_bits: int | None) -> np.dtype | None:
    if ds_bits is not None:  # palette -> RGB: the LUT entries' size
        return np.dtype(np.uint16 if ds_bits > 8 else np.uint8)
    return np.dtype(row["decoded_dtype"]).newbyteorder("=") if row["decoded_dtype"] else None


def _pydicom_reference(relative: str, row: dict[str, str]) -> np.ndarray:
    """pydicom's pixel_array with pylibjpeg (or numpy for native data), palette applied."""
    plugin = "pylibjpeg" if row["dec_pylibjpeg"] == "ok" else ""
    path = CORPUS / relative
    force = row["read"] != "ok"
    if relative == CLIP:
        frames = [pydicom_pixel_array(path, index=i, decoding_plugin=plugin) for i in CLIP_FRAMES]
        return np.stack(frames)
    ds = pydicom.dcmread(path, force=force)
    ds.pixel_array_options(decoding_plugin=plugin)
    reference = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        reference = apply_color_lut(reference, ds)
    return np.asarray(reference)


# python-gdcm's own reader, run in a subprocess: it aborts the process on some inputs.
_GDCM_SCRIPT = """
import json, sys
import gdcm
import numpy as np
out = {}
for index, path in enumerate(json.loads(sys.argv[1])):
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        continue
    image = reader.GetImage()
    dtype = {"UINT8": "u1", "INT8": "i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4",
             "INT32": "<i4"}[image.GetPixelFormat().GetScalarTypeAsString()]
    raw = image.GetBuffer().encode("utf-8", "surrogateescape")
    target = f"{sys.argv[2]}/{index}.npy"
    np.save(target, np.frombuffer(raw, dtype=dtype))
    out[path] = target
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def gdcm_references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The GDCM_DIRECT files as python-gdcm's reader decodes them (flat arrays)."""
    if not HAVE_GDCM:
        return {}
    assert not set(GDCM_DIRECT) & set(GDCM_READER_ABORTS)
    paths = [str(CORPUS / p) for p in GDCM_DIRECT]
    folder = tmp_path_factory.mktemp("gdcm")
    done = subprocess.run(
        [sys.executable, "-c", _GDCM_SCRIPT, json.dumps(paths), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    saved = json.loads(done.stdout.strip().splitlines()[-1])
    return {p: np.load(saved[str(CORPUS / p)]) for p in GDCM_DIRECT if str(CORPUS / p) in saved}


# --- the corpus --------------------------------------------------------------------------


def test_the_manifest_is_all_there() -> None:
    assert len(ROWS) == 279
    pydicom_decodes = {
        p for p, r in ROWS.items() if "ok" in (r["dec_pylibjpeg"], r["dec_native_or_rle"])
    }
    assert len(pydicom_decodes) == 264
    gdcm_only = {p for p, r in ROWS.items() if r["gdcm_direct_if_all_failed"] == "ok"}
    assert gdcm_only == set(GDCM_DIRECT)
    decodable = set(ROWS) - set(REFUSED)
    # 264 by pydicom + 6 by gdcm's reader + 5 by nobody before this decoder
    assert decodable == pydicom_decodes | gdcm_only | set(OWN_DECODES)
    assert len(decodable) == 275
    assert all(p in ROWS for group in TWIN_GROUPS for p in group)
    assert all(p in TWINS for p in (*OWN_DECODES, *PYDICOM_PALETTE_WRONG))


@pytest.mark.parametrize("relative", sorted(ROWS))
def test_every_pixel_file_decodes_exactly_or_gets_a_reason(
    relative: str, gdcm_references: dict[str, np.ndarray]
) -> None:
    row = ROWS[relative]
    data = _corpus_bytes(relative)
    if relative in REFUSED or (relative in NEEDS_GDCM and not HAVE_GDCM):
        error, phrase = REFUSED.get(relative, (InvalidInput, "pixel data"))
        with pytest.raises(error) as caught:
            decode_instance(data)
        reason = str(caught.value)
        assert phrase in reason
        assert "Traceback" not in reason and "\n" not in reason and len(reason) < 500
        return

    image = decode_instance(data)
    pixels, attributes = image.pixels, image.attributes
    ds = pydicom.dcmread(CORPUS / relative, force=True, stop_before_pixels=True)
    palette_bits = None
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        palette_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        assert attributes.photometric_interpretation == "RGB"
        assert attributes.bits_stored == palette_bits
    assert pixels.shape == _expected_shape(row, 3 if palette_bits else 0)
    expected_dtype = _expected_dtype(row, palette_bits)
    assert expected_dtype is None or pixels.dtype == expected_dtype
    assert pixels.dtype.isnative
    if row["transfer_syntax"]:
        assert attributes.transfer_syntax_uid == row["transfer_syntax"]
    _assert_fits_bits_stored(pixels, attributes.bits_stored, attributes.pixel_representation)

    reference = _reference(relative, row, pixels, gdcm_references)
    if reference is not None:
        got = pixels[list(CLIP_FRAMES)] if relative == CLIP else pixels
        if relative == "pydicom-testfiles/badVR.dcm":  # gdcm's reader returns frame 1 only
            got = pixels[:1]
        _assert_same_pixels(got, reference, lossy=row["plugins_disagree"] == "1")
    for twin in TWINS.get(relative, []):
        np.testing.assert_array_equal(pixels, _decoded_twin(twin), err_msg=f"twin {twin}")


def _reference(
    relative: str, row: dict[str, str], pixels: np.ndarray, gdcm_references: dict[str, np.ndarray]
) -> np.ndarray | None:
    if relative in OWN_DECODES or relative in PYDICOM_PALETTE_WRONG:
        return None  # nobody else decodes it (right): the twins are the reference
    if relative in GDCM_DIRECT:
        if relative not in gdcm_references:  # python-gdcm is not installed here
            return None
        reference = gdcm_references[relative]
        if "OT-PAL" in relative:
            ds = pydicom.dcmread(CORPUS / relative, force=True)
            reference = apply_color_lut(reference.reshape(pixels.shape[1:3]), ds)
        return reference
    return _pydicom_reference(relative, row)


def _assert_same_pixels(pixels: np.ndarray, reference: np.ndarray, lossy: bool) -> None:
    assert pixels.size == reference.size
    reference = reference.reshape(pixels.shape)
    if not lossy:
        np.testing.assert_array_equal(pixels, reference)
        return
    # Lossy JPEG: libjpeg-turbo (used here) and libjpeg 9 (pylibjpeg) round the IDCT and
    # upsample chroma differently; measured on the corpus: max 5, mean <= 0.12.
    difference = np.abs(pixels.astype(np.int64) - reference.astype(np.int64))
    assert difference.max() <= 5 and difference.mean() <= 0.15


def _assert_fits_bits_stored(pixels: np.ndarray, bits: int, signed: int) -> None:
    if pixels.dtype.kind not in "ui" or bits >= pixels.dtype.itemsize * 8:
        return
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    assert low <= pixels.min() and pixels.max() <= high


def test_files_gdcms_reader_aborts_on_never_reach_gdcm() -> None:
    from services.decoder.codecs import CHAINS

    assert not any("gdcm" in name for name in CHAINS[UID("1.2.840.10008.1.2.5")] if name != "rle")
    for relative in GDCM_READER_ABORTS:
        assert decode_instance(_corpus_bytes(relative)).pixels.shape == (3, *_liver(relative), 1)


def _liver(relative: str) -> tuple[int, int]:
    return (510, 510) if "nonbyte" in relative else (512, 512)


# --- bad input ---------------------------------------------------------------------------


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


def _reason(data: bytes, error: type[Exception], limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(error) as caught:
        decode_instance(data, limits)
    assert type(caught.value) is error  # not a parent/child class by accident
    reason = str(caught.value)
    assert "Traceback" not in reason and "\n" not in reason and " at 0x" not in reason
    return reason


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
    assert reason.startswith("pixel data truncated")
    assert "expected 512 bytes" in reason and "got 412 bytes" in reason


def test_truncated_encapsulated_pixel_data() -> None:
    data = _corpus_bytes("pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    assert _reason(data[:-1000], InvalidInput).startswith("pixel data truncated")


def test_encapsulated_pixel_data_with_fewer_frames_than_declared() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    ds.NumberOfFrames = 3
    buf = BytesIO()
    ds.save_as(buf)
    reason = _reason(buf.getvalue(), InvalidInput)
    assert "pixel data truncated" in reason and "3 frames" in reason


def test_too_many_pixels() -> None:
    reason = _reason(_to_bytes(_synthetic(64, 64)), TooLarge, DecodeLimits(max_pixels=1000))
    assert "64x64" in reason and "4,096 pixel values" in reason and "limit is 1,000" in reason


def test_too_many_decoded_bytes() -> None:
    limits = DecodeLimits(max_decoded_bytes=4096)
    reason = _reason(_to_bytes(_synthetic(64, 64)), TooLarge, limits)
    assert "8,192 bytes decoded" in reason and "limit is 4,096 bytes" in reason


def test_too_many_decoded_bytes_counts_the_rgb_a_palette_expands_to() -> None:
    data = _corpus_bytes("pydicom-data/OT-PAL-8-face.dcm")  # 640x480 indices, 16-bit LUT
    reason = _reason(data, TooLarge, DecodeLimits(max_decoded_bytes=640 * 480 * 3))
    assert f"{640 * 480 * 6:,} bytes decoded" in reason


def test_too_many_encoded_bytes() -> None:
    reason = _reason(_to_bytes(_synthetic()), TooLarge, DecodeLimits(max_encoded_bytes=100))
    assert "limit is 100 bytes" in reason


def _j2k_claiming(rows: int, cols: int, codestream: bytes) -> bytes:
    ds = _synthetic(4, 4)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns, ds.BitsStored = rows, cols, 16
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 8192 x 8192 x 16 bit = 128 MiB from 100 bytes; the codestream is garbage: had anything
    # tried to decode it, the error would be InvalidInput, not TooLarge.
    data = _j2k_claiming(8192, 8192, b"\xff\x4f\xff\x51" + bytes(96))
    reason = _reason(data, TooLarge)
    assert "decompression bomb" in reason and "134,217,728 bytes" in reason
    assert "the limit is 1,000:1" in reason


def test_compression_ratio_limit_is_configurable() -> None:
    data = _corpus_bytes("pydicom-testfiles/JPEG2000.dcm")  # 266 bytes -> 512 KiB: 1971:1
    decode_instance(data)  # small images are not checked by default: harmless
    strict = DecodeLimits(max_compression_ratio=100, compression_check_min_bytes=0)
    assert "1,971:1, the limit is 100:1" in _reason(data, TooLarge, strict)


def test_deflated_data_set_bomb_is_refused_before_pydicom_inflates_it() -> None:
    ds = _synthetic(1024, 1024)
    ds.PixelData = bytes(2 * 1024 * 1024)  # zeros: deflate shrinks them ~1000x
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    assert len(data) < 20_000
    assert decode_instance(data).pixels.shape == (1, 1024, 1024, 1)
    reason = _reason(data, TooLarge, DecodeLimits(max_compression_ratio=50))
    assert "deflate-compressed data set" in reason and "decompression bomb" in reason


def test_corrupt_deflated_data_set() -> None:
    ds = _synthetic()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    stream = BytesIO(buf.getvalue())
    read_preamble(stream, False)
    _read_file_meta_info(stream)  # leaves the stream where the deflated data set starts
    meta = buf.getvalue()[: stream.tell()]
    reason = _reason(meta + bytes([0xFF]) * 64, InvalidInput)  # BTYPE 11: invalid
    assert "deflate-compressed data set is corrupt (zlib: " in reason


def test_unknown_transfer_syntax() -> None:
    ds = _synthetic()
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.9999.1")
    buf = BytesIO()  # written as explicit little endian but labelled with a private syntax
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    reason = _reason(buf.getvalue(), UnsupportedInput)
    assert "1.2.826.0.1.3680043.9999.1" in reason and "not supported" in reason


def test_video_transfer_syntax_is_unsupported() -> None:
    ds = _synthetic()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile
    ds.PixelData = encapsulate([bytes(64)])
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    reason = _reason(buf.getvalue(), UnsupportedInput)
    assert "1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level)" in reason
    assert "not supported" in reason


def test_corrupt_compressed_stream() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"])
    buf = BytesIO()
    ds.save_as(buf)
    reason = _reason(buf.getvalue(), InvalidInput)
    assert reason.startswith("could not decode the 1.2.840.10008.1.2.4.50 (JPEG Baseline")
    assert "the JPEG codestream is corrupt (pillow: " in reason and "pylibjpeg: " in reason
    assert len(reason) < 450  # codec messages trimmed


def test_jpeg_whose_header_describes_another_image() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    ds.Rows = ds.Columns = 50  # the codestream says 100 x 100
    buf = BytesIO()
    ds.save_as(buf)
    reason = _reason(buf.getvalue(), InvalidInput)
    assert "JPEG codestream is corrupt or belongs to another image" in reason
    assert "100 columns x 100 rows x 3 component(s), the DICOM header 50 x 50 x 3" in reason


def test_bits_stored_above_bits_allocated() -> None:
    ds = _synthetic()
    ds.BitsStored = 17
    assert "Bits Stored 17 does not fit Bits Allocated 16" in _reason(_to_bytes(ds), InvalidInput)


def test_unreadable_number_of_frames_of_compressed_data() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    ds.NumberOfFrames = 1
    buf = BytesIO()
    ds.save_as(buf)
    element = b"\x28\x00\x08\x00IS\x02\x001 "  # (0028,0008) IS, 2 bytes, '1 '
    assert buf.getvalue().count(element) == 1
    data = buf.getvalue().replace(element, element[:-2] + b"1A")
    reason = _reason(data, InvalidInput)
    assert "Number of Frames is not a valid number of frames (2 characters" in reason
    assert "1A" not in reason


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


@pytest.mark.parametrize(
    ("name", "in_process"),
    [
        ("pydicom-data/RG1_UNCR.dcm", True),  # explicit VR little endian
        ("pydicom-testfiles/MR_small_implicit.dcm", True),
        ("pydicom-testfiles/MR_small_bigendian.dcm", True),
        ("pydicom-testfiles/MR_small_RLE.dcm", False),  # a native codec: the worker pool
        ("pydicom-data/RG1_J2KI.dcm", False),
        ("pydicom-testfiles/meta_missing_tsyntax.dcm", False),  # unknown: the pool says why
    ],
)
def test_only_syntaxes_without_native_codecs_decode_in_process(name: str, in_process: bool) -> None:
    assert decodes_in_process((CORPUS / name).read_bytes()) is in_process
    assert decodes_in_process(b"GIF89a" + bytes(200)) is False
