"""Pixel semantics and attributes of decoded corpus files: signedness, Bits Stored, byte
order, rescale to HU, modality/VOI LUTs, colour spaces, palettes, planar configuration,
multi-frame and the functional groups of enhanced objects."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from services.common.images import DecodedImage
from services.decoder.core import decode_instance

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
CT = "cornerstone/CTImage.dcm"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

try:
    import gdcm  # noqa: F401  (JPEG processes 6-12 need python-gdcm's codecs)

    HAVE_GDCM = True
except ImportError:
    HAVE_GDCM = False


def _decode(relative: str) -> DecodedImage:
    return decode_instance((CORPUS / relative).read_bytes())


def _dataset(relative: str) -> Dataset:
    return pydicom.dcmread(CORPUS / relative, force=True)


# --- stored values -----------------------------------------------------------------------


def test_signed_ct_keeps_negative_values() -> None:
    image = _decode(CT)
    assert image.pixels.dtype == np.int16 and image.attributes.pixel_representation == 1
    assert image.pixels.min() == -2000  # padding outside the scan circle


def test_rescale_gives_the_same_hounsfield_units_in_every_encoding() -> None:
    """16 encodings of one CT: lossless ones give identical HU, lossy ones close HU even
    where the encoder stored unsigned 12/8-bit values with another slope and intercept."""
    original = _decode(CT)
    hu = original.pixels * original.attributes.rescale_slope + original.attributes.rescale_intercept
    assert hu.min() == -3024.0 and hu.max() == 1378.0
    for path in sorted((CORPUS / "cornerstone").glob("CTImage.dcm_*.dcm")):
        if not HAVE_GDCM and ("Process6_8" in path.name or "Process10_12" in path.name):
            continue
        image = _decode(f"cornerstone/{path.name}")
        a = image.attributes
        other = image.pixels.astype(np.float64) * a.rescale_slope + a.rescale_intercept
        error = np.abs(other - hu)
        if "Lossless" in path.name or "Endian" in path.name or "Process14" in path.name:
            assert error.max() == 0, path.name
        elif "Process1Transfer" in path.name:  # 8 bits: slope 32 HU per step
            assert error.mean() < 25 and a.rescale_slope > 32, path.name
        else:  # JPEG 12-bit, JPEG-LS near-lossless, JPEG 2000 lossy
            assert error.mean() < 5 and error.max() < 40, path.name


def test_signed_values_are_sign_extended_from_bits_stored() -> None:
    """mlut_18: 12 of 16 bits stored, signed; the file holds e.g. 0x0FFF for -1."""
    ds = _dataset("pydicom-data/mlut_18.dcm")
    raw = np.frombuffer(ds.PixelData, dtype="<i2")
    assert raw.max() > 2047  # not sign-extended in the file
    image = _decode("pydicom-data/mlut_18.dcm")
    assert image.attributes.bits_stored == 12
    assert image.pixels.min() >= -2048 and image.pixels.max() <= 2047
    expected = ((raw.astype(np.int32) & 0xFFF) ^ 0x800) - 0x800
    np.testing.assert_array_equal(image.pixels.ravel(), expected)


def test_bits_above_bits_stored_are_cleared() -> None:
    ds = _secondary_capture(np.array([[0x0FFF, 0xF001], [0x8000, 0x1234]], dtype="<u2"), 12)
    image = decode_instance(_written(ds))
    assert image.pixels[0, :, :, 0].tolist() == [[0x0FFF, 0x0001], [0x0000, 0x0234]]


def test_big_endian_equals_little_endian_in_native_order() -> None:
    big = _decode(f"{CT}_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm")
    assert big.pixels.dtype == np.dtype("int16") and big.pixels.dtype.isnative
    np.testing.assert_array_equal(big.pixels, _decode(CT).pixels)
    rgb32 = _decode("pydicom-data/SC_rgb_expb_32bit.dcm")
    assert rgb32.pixels.dtype == np.uint32 and rgb32.pixels.dtype.isnative


def test_one_bit_segmentation_is_unpacked_to_zeros_and_ones() -> None:
    image = _decode("pydicom-data/liver_nonbyte_aligned.dcm")  # frames not byte aligned
    assert image.pixels.shape == (3, 510, 510, 1) and image.pixels.dtype == np.uint8
    assert set(np.unique(image.pixels)) == {0, 1} and image.attributes.bits_stored == 1


def test_float_pixel_data() -> None:
    image = _decode("pydicom-data/parametric_map_float.dcm")
    assert image.pixels.dtype == np.float32
    reference = _dataset("pydicom-data/parametric_map_float.dcm").pixel_array
    np.testing.assert_array_equal(image.pixels.reshape(reference.shape), reference)


# --- LUTs ----------------------------------------------------------------------------------


def test_modality_lut_sequence() -> None:
    """Descriptor [4096, -2048, 16]: signed first value (Pixel Representation 1)."""
    image = _decode("pydicom-data/mlut_18.dcm")
    lut = image.attributes.modality_lut
    assert lut is not None
    assert (lut.first_mapped, lut.bits_per_entry, lut.data.size) == (-2048, 16, 4096)
    ds = _dataset("pydicom-data/mlut_18.dcm")
    expected = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(lut.apply(image.pixels[0, :, :, 0]), expected)


def test_voi_lut_sequence() -> None:
    image = _decode("pydicom-data/vlut_04.dcm")
    assert image.attributes.modality_lut is None
    (lut,) = image.attributes.voi_luts
    assert (lut.first_mapped, lut.bits_per_entry, lut.data.size) == (0, 16, 256)
    ds = _dataset("pydicom-data/vlut_04.dcm")
    np.testing.assert_array_equal(
        lut.apply(image.pixels[0, :, :, 0]), apply_voi(ds.pixel_array, ds)
    )


def test_empty_lut_items_are_ignored() -> None:
    """The file has one Modality LUT and one VOI LUT item, both without descriptor or data."""
    a = _decode("pylibjpeg-data/JPEGLosslessSV1/JPEGLosslessP14SV1_1s_1f_u_16_16.dcm").attributes
    assert a.modality_lut is None and a.voi_luts == ()


def _lut_item(descriptor: list[int], data: bytes | list[int], vr: str = "US") -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, vr, descriptor)
    item.add_new(0x00283006, "OW" if isinstance(data, bytes) else "US", data)
    item.LUTExplanation = "test LUT"
    return item


@pytest.mark.parametrize(
    ("representation", "raw_first", "first"),
    [(0, 0x8000, 32768), (1, 0x8000, -32768), (1, 0xFC00, -1024), (1, 100, 100)],
)
def test_lut_descriptor_first_value_follows_pixel_representation(
    representation: int, raw_first: int, first: int
) -> None:
    ds = _secondary_capture(np.zeros((2, 2), dtype="<u2"), 16, representation)
    ds.ModalityLUTSequence = Sequence([_lut_item([4, raw_first, 16], [1, 2, 3, 4])])
    lut = decode_instance(_written(ds)).attributes.modality_lut
    assert lut is not None and lut.first_mapped == first and lut.explanation == "test LUT"


def test_lut_descriptor_zero_entries_means_65536() -> None:
    ds = _secondary_capture(np.zeros((2, 2), dtype="<u2"), 16)
    table = np.arange(65536, dtype="<u2")[::-1].copy()
    ds.VOILUTSequence = Sequence([_lut_item([0, 0, 16], table.tobytes())])  # OW data
    (lut,) = decode_instance(_written(ds)).attributes.voi_luts
    assert lut.data.size == 65536 and lut.data[0] == 65535 and lut.data[-1] == 0


def test_voi_lut_function_and_multiple_voi_luts() -> None:
    ds = _secondary_capture(np.zeros((2, 2), dtype="<u2"), 16)
    ds.WindowCenter, ds.WindowWidth = [300, 40], [800, 400]
    ds.VOILUTFunction = "sigmoid "
    ds.VOILUTSequence = Sequence(
        [_lut_item([2, 0, 8], [0, 255]), _lut_item([2, 0, 16], [0, 65535])]
    )
    a = decode_instance(_written(ds)).attributes
    assert a.voi_lut_function == "SIGMOID"
    assert (a.window_center, a.window_width) == (300.0, 800.0)  # the first of several
    assert [lut.bits_per_entry for lut in a.voi_luts] == [8, 16]
    ds.VOILUTFunction = "GAMMA"  # not a defined term
    assert decode_instance(_written(ds)).attributes.voi_lut_function == "LINEAR"


def test_voi_lut_function_of_an_enhanced_object_comes_from_its_functional_groups() -> None:
    ds = _dataset("pydicom-data/eCT_Supplemental.dcm")
    ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0].VOILUTFunction = "LINEAR_EXACT"
    assert decode_instance(_written(ds)).attributes.voi_lut_function == "LINEAR_EXACT"


# --- colour ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "stored"),
    [
        ("pydicom-data/SC_ybr_full_uncompressed.dcm", "YBR_FULL"),
        ("pydicom-testfiles/SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),
        ("cornerstone/US-YBR_FULL_422-EVRLE.dcm", "YBR_FULL_422"),
        ("pydicom-testfiles/SC_rgb_dcmtk_+eb+cy+s2.dcm", "YBR_FULL_422"),  # JPEG
        ("pydicom-testfiles/examples_ybr_color.dcm", "YBR_FULL_422"),  # JPEG, 30 frames
        ("pydicom-data/US1_J2KI.dcm", "YBR_ICT"),
        ("pydicom-testfiles/examples_jpeg2k.dcm", "YBR_RCT"),
    ],
)
def test_ybr_comes_back_as_rgb(relative: str, stored: str) -> None:
    assert _dataset(relative).PhotometricInterpretation == stored
    image = _decode(relative)
    assert image.attributes.photometric_interpretation == "RGB"
    assert image.pixels.shape[-1] == 3 and image.pixels.dtype == np.uint8


def test_ybr_is_converted_once() -> None:
    """The RGB source image, YBR_FULL and YBR_FULL_422 encodings of it (the conversion
    rounds: within 6) and the YBR JPEG decoded equal to dcmtk's own decoding of it."""
    rgb = _decode("pydicom-data/SC_rgb.dcm").pixels.astype(int)
    for relative in (
        "pydicom-data/SC_ybr_full_uncompressed.dcm",
        "pydicom-testfiles/SC_ybr_full_422_uncompressed.dcm",
        "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm",
    ):
        ybr = _decode(relative).pixels.astype(int)
        assert np.abs(ybr - rgb).max() <= 6 and np.abs(ybr - rgb).mean() < 1, relative
    # J2K with RCT (reversible) equals the uncompressed RGB original exactly
    np.testing.assert_array_equal(
        _decode("pydicom-testfiles/examples_jpeg2k.dcm").pixels,
        _decode("pydicom-data/US1_UNCR.dcm").pixels,
    )


def test_palette_color_comes_back_as_rgb() -> None:
    image = _decode("pydicom-data/OBXXXX1A.dcm")
    assert image.attributes.photometric_interpretation == "RGB"
    assert image.pixels.shape == (1, 600, 800, 3) and image.pixels.dtype == np.uint16
    assert image.attributes.bits_stored == 16 and image.attributes.pixel_representation == 0
    ds = _dataset("pydicom-data/OBXXXX1A.dcm")
    np.testing.assert_array_equal(image.pixels[0], apply_color_lut(ds.pixel_array, ds))


def test_palette_of_a_file_without_file_meta() -> None:
    image = _decode("pydicom-data/OT-PAL-8-face.dcm")  # no preamble, no transfer syntax
    assert image.attributes.transfer_syntax_uid == "1.2.840.10008.1.2"
    assert image.attributes.photometric_interpretation == "RGB"
    assert image.pixels.shape == (1, 480, 640, 3)


def test_planar_configuration() -> None:
    assert _dataset("pydicom-data/color-pl.dcm").PlanarConfiguration == 1
    assert _dataset("pydicom-data/color-px.dcm").PlanarConfiguration == 0
    planar = _decode("pydicom-data/color-pl.dcm").pixels
    np.testing.assert_array_equal(planar, _decode("pydicom-data/color-px.dcm").pixels)
    assert planar.shape == (1, 120, 256, 3)


def test_monochrome1_is_preserved() -> None:
    image = _decode("pydicom-data/RG1_J2KR.dcm")
    assert image.attributes.photometric_interpretation == "MONOCHROME1"
    assert (image.attributes.modality, image.attributes.body_part_examined) == ("CR", "CHEST")
    assert image.attributes.pixel_spacing is None  # the file says "0.000\\0.000"


# --- multi-frame and enhanced objects --------------------------------------------------------


def test_long_ultrasound_clip() -> None:
    image = _decode("pydicom-data/color3d_jpeg_baseline.dcm")
    assert image.pixels.shape == (120, 480, 640, 3)
    assert image.attributes.number_of_frames == 120
    assert image.attributes.photometric_interpretation == "RGB"
    assert image.attributes.frame_positions == ()  # no geometry in an ultrasound clip


def test_enhanced_ct_functional_groups() -> None:
    image = _decode("pydicom-data/eCT_Supplemental.dcm")
    a = image.attributes
    assert image.pixels.shape[0] == a.number_of_frames == 2
    assert (a.rescale_slope, a.rescale_intercept) == (1.0, -1024.0)
    assert (a.window_center, a.window_width) == (49.0, 102.0)
    assert a.pixel_spacing == pytest.approx((0.388672, 0.388672))
    assert a.frame_positions == ((99.5, -301.5, -159.0), (99.5, -301.5, -149.0))
    assert a.image_orientation_patient == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert a.slice_thickness == 10.0
    assert (a.instance_number, a.series_number) == (1, 3)


def test_enhanced_mr_per_frame_groups() -> None:
    """Siemens XA10: position, orientation and pixel measures only per frame."""
    relative = "dcm_qa_enh/Siemens/XA10/6_1.dcm"
    ds = _dataset(relative)
    assert "PlaneOrientationSequence" not in ds.SharedFunctionalGroupsSequence[0]
    a = _decode(relative).attributes
    per_frame = ds.PerFrameFunctionalGroupsSequence
    expected = tuple(
        tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        for item in per_frame
    )
    assert len(a.frame_positions) == a.number_of_frames == 6
    assert a.frame_positions == expected
    orientation = per_frame[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert a.image_orientation_patient == tuple(float(v) for v in orientation)
    assert a.pixel_spacing == (3.375, 3.375) and a.slice_thickness == 2.4


def test_single_frame_position_orientation_and_numbers() -> None:
    a = _decode(CT).attributes
    assert a.frame_positions == ((-161.399994, -148.800003, 4.7),)
    assert a.image_orientation_patient == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert (a.slice_thickness, a.instance_number, a.series_number) == (5.0, 1, 2)


def test_rt_dose_frames_are_placed_by_the_grid_frame_offset_vector() -> None:
    a = _decode("pydicom-testfiles/rtdose.dcm").attributes
    ds = _dataset("pydicom-testfiles/rtdose.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert offsets[0] == 0.0 and len(offsets) == a.number_of_frames == 15
    assert a.frame_positions == tuple((x, y, z + o) for o in offsets)


def test_unreadable_number_of_frames_is_inferred_from_native_data() -> None:
    """badVR.dcm is rtdose.dcm with Number of Frames '1A'."""
    image = _decode("pydicom-testfiles/badVR.dcm")
    assert image.pixels.shape == (15, 10, 10, 1)
    np.testing.assert_array_equal(image.pixels, _decode("pydicom-testfiles/rtdose.dcm").pixels)


# --- helpers -------------------------------------------------------------------------------


def _secondary_capture(values: np.ndarray, bits_stored: int, representation: int = 0) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = representation
    ds.PixelData = values.astype("<u2").tobytes()
    return ds


def _written(ds: Dataset) -> bytes:
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
