"""The decoders written here (Deflated Image Frame, RLE incl. 1 bit, JPEG 2000 repair,
gdcm frames), the codestream header checks, colour conversion and the fallback chains."""

from __future__ import annotations

import logging
import sys
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import UID, JPEG2000Lossless, RLELossless

from services.common.errors import InvalidInput, UnsupportedInput
from services.decoder import codecs
from services.decoder.codecs import (
    CHAINS,
    DeflatedImageFrame,
    j2k_geometry,
    jpeg_header,
    packbits,
    repair_j2k,
)
from services.decoder.colour import fit_bits_stored, ybr_full_to_rgb
from services.decoder.core import decode_instance

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _bytes(relative: str) -> bytes:
    return (CORPUS / relative).read_bytes()


def _pixels(data: bytes) -> np.ndarray:
    return decode_instance(data).pixels


def _written(ds: Dataset) -> bytes:
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


# --- the chains ----------------------------------------------------------------------------


def test_fastest_correct_decoder_comes_first() -> None:
    """The order measured on the corpus (see codecs.CHAINS)."""
    first = {str(ts): chain[0] for ts, chain in CHAINS.items()}
    assert first["1.2.840.10008.1.2.5"] == "pylibjpeg"
    assert first["1.2.840.10008.1.2.4.50"] == first["1.2.840.10008.1.2.4.51"] == "pillow"
    assert first["1.2.840.10008.1.2.4.57"] == first["1.2.840.10008.1.2.4.70"] == "gdcm"
    assert first["1.2.840.10008.1.2.4.80"] == first["1.2.840.10008.1.2.4.81"] == "pyjpegls"
    # repair first: it steps aside unless needed; lossless: gdcm is faster on large images
    # (nvimgcodec, on the GPU, steps aside here: no package, no GPU)
    lossless, lossy = CHAINS[UID("1.2.840.10008.1.2.4.90")], CHAINS[UID("1.2.840.10008.1.2.4.91")]
    assert lossless == ("j2k-repair", "nvimgcodec", "gdcm", "pylibjpeg")
    assert lossy == ("j2k-repair", "nvimgcodec", "pylibjpeg", "gdcm")
    assert first["1.2.840.10008.1.2.4.53"] == first["1.2.840.10008.1.2.4.55"] == "gdcm-frames"
    assert first["1.2.840.10008.1.2.8.1"] == "deflate"


def test_a_failing_decoder_falls_back_to_the_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(spec: codecs.PixelSpec) -> codecs.Decoded:
        raise RuntimeError("simulated codec failure")

    pytest.importorskip("gdcm")
    relative = "pydicom-testfiles/MR_small_jp2klossless.dcm"
    expected = _pixels(_bytes(relative))
    monkeypatch.setitem(codecs._CANDIDATES, "gdcm", broken)
    with caplog.at_level(logging.WARNING, logger="services.decoder.codecs"):
        np.testing.assert_array_equal(_pixels(_bytes(relative)), expected)
    assert "with pylibjpeg after gdcm (simulated codec failure) failed" in caplog.text
    assert "j2k-repair" not in caplog.text  # stepped aside: nothing to repair


def test_every_decoder_failing_names_each_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: codecs.PixelSpec) -> codecs.Decoded:
        raise RuntimeError("simulated")

    for name in CHAINS[JPEG2000Lossless]:
        monkeypatch.setitem(codecs._CANDIDATES, name, broken)
    with pytest.raises(InvalidInput) as caught:
        decode_instance(_bytes("pydicom-testfiles/MR_small_jp2klossless.dcm"))
    assert str(caught.value) == (
        "could not decode the 1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression (Lossless "
        "Only)) pixel data: the JPEG 2000 codestream is corrupt (j2k-repair: simulated; "
        "nvimgcodec: simulated; gdcm: simulated; pylibjpeg: simulated)"
    )


def test_without_python_gdcm_the_gdcm_only_syntaxes_are_unsupported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gdcm", None)  # import gdcm -> ImportError
    data = _bytes("cornerstone/CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm")
    with pytest.raises(UnsupportedInput) as caught:
        decode_instance(data)
    assert "no installed decoder can decode 1.2.840.10008.1.2.4.53" in str(caught.value)
    assert "gdcm-frames: python-gdcm is not installed" in str(caught.value)


@pytest.mark.parametrize(
    "relative",
    [
        "pydicom-testfiles/SC_rgb_rle.dcm",
        "pydicom-testfiles/SC_rgb_rle_16bit_2frame.dcm",
        "pydicom-testfiles/SC_rgb_rle_32bit.dcm",
        "pydicom-testfiles/MR_small_RLE.dcm",  # signed 16 bit
        "pydicom-data/emri_small_RLE.dcm",  # 10 frames
        "pydicom-testfiles/rtdose_rle.dcm",
    ],
)
def test_own_rle_decoder_equals_pylibjpeg(relative: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _pixels(_bytes(relative))
    monkeypatch.setitem(CHAINS, RLELossless, ("rle",))
    np.testing.assert_array_equal(_pixels(_bytes(relative)), expected)


def test_gdcm_frames_decodes_what_libjpeg_rejects() -> None:
    """RG2_JPLY: a non-conformant 12-bit JPEG; its repaired twin decodes with pylibjpeg."""
    pytest.importorskip("gdcm")
    broken = _pixels(_bytes("pylibjpeg-data/JPEGExtended/RG2_JPLY.dcm")).astype(int)
    fixed = _pixels(_bytes("pylibjpeg-data/JPEGExtended/RG2_JPLY_fixed.dcm")).astype(int)
    assert broken.shape == fixed.shape == (1, 2140, 1760, 1)
    assert np.abs(broken - fixed).max() <= 1 and np.abs(broken - fixed).mean() < 0.05


# --- Deflated Image Frame Compression -------------------------------------------------------


def _deflated_copy(relative: str, compress: object = None) -> bytes:
    """The native file re-encoded as Deflated Image Frames (one raw deflate stream per frame,
    1-bit frames packed from a byte boundary)."""
    ds = pydicom.dcmread(CORPUS / relative)
    frames = int(ds.get("NumberOfFrames") or 1)
    pixels = ds.pixel_array.reshape(frames, -1)
    encoded = []
    for frame in pixels:
        if ds.BitsAllocated == 1:
            raw = np.packbits(frame.astype(np.uint8), bitorder="little").tobytes()
        else:
            raw = frame.astype(frame.dtype.newbyteorder("<")).tobytes()
        if compress is None:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            encoded.append(packer.compress(raw) + packer.flush())
        else:
            encoded.append(compress(raw))  # type: ignore[operator]
    # pydicom 3.0 refuses to write a transfer syntax it does not know: write it as JPEG 2000
    # (same encapsulation, same length of UID) and relabel the file meta.
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    data = _written(ds)
    label = str(JPEG2000Lossless).encode()
    assert data.count(label) == 1 and len(DeflatedImageFrame) + 1 == len(label)
    return data.replace(label, DeflatedImageFrame.encode() + b"\x00")


@pytest.mark.parametrize(
    "relative",
    [
        "pydicom-data/liver_nonbyte_aligned.dcm",
        "pydicom-testfiles/MR_small.dcm",
        "pydicom-data/SC_rgb_16bit_2frame.dcm",
    ],
)
def test_deflated_image_frames_round_trip(relative: str) -> None:
    np.testing.assert_array_equal(_pixels(_deflated_copy(relative)), _pixels(_bytes(relative)))


def test_deflated_image_frames_accept_zlib_wrapped_streams() -> None:
    relative = "pydicom-testfiles/MR_small.dcm"
    data = _deflated_copy(relative, zlib.compress)
    np.testing.assert_array_equal(_pixels(data), _pixels(_bytes(relative)))


def test_deflated_image_frame_errors() -> None:
    relative = "pydicom-testfiles/MR_small.dcm"  # 64x64x16 bit: 8192 bytes a frame

    def packed(raw: bytes) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return packer.compress(raw) + packer.flush()

    short = _deflated_copy(relative, lambda raw: packed(raw[:8000]))
    with pytest.raises(
        InvalidInput, match="pixel data truncated: deflated frame 1 inflates to 8,000"
    ):
        decode_instance(short)
    long = _deflated_copy(relative, lambda raw: packed(raw + bytes(100)))
    with pytest.raises(InvalidInput, match="inflates to more than the 8,192 bytes"):
        decode_instance(long)
    garbage = _deflated_copy(relative, lambda raw: b"\xff" * 64)
    with pytest.raises(InvalidInput, match=r"deflated frame data is corrupt \(frame 1: zlib: "):
        decode_instance(garbage)


# --- RLE -------------------------------------------------------------------------------------


def test_packbits() -> None:
    segment = bytes([2, 1, 2, 3, 0xFE, 9, 0x80, 0, 7])  # literal 3, repeat 3, no-op, literal 1
    assert packbits(segment, 7, 0) == bytes([1, 2, 3, 9, 9, 9, 7])
    assert packbits(segment + bytes([0]), 7, 0) == bytes([1, 2, 3, 9, 9, 9, 7])  # pad dropped
    with pytest.raises(InvalidInput, match="decodes to 7 bytes; 8 expected"):
        packbits(segment, 8, 0)


def test_one_bit_rle_frames_are_bit_packed_per_frame() -> None:
    """liver_nonbyte_aligned_rle: 510 x 510 = 32512.5 bytes: each frame starts on a byte."""
    ds = pydicom.dcmread(CORPUS / "pydicom-data/liver_nonbyte_aligned_rle.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=3))
    header = np.frombuffer(frame[:8], dtype="<u4")
    assert header[0] == 1  # one segment
    assert len(packbits(frame[int(header[1]) :], 32513, 0)) == 32513


def test_rle_with_the_wrong_number_of_segments() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/MR_small_RLE.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    header = (1).to_bytes(4, "little") + frame[4:8] + bytes(56)  # 1 segment; 16 bits need 2
    ds.PixelData = encapsulate([header + frame[64:]])
    with pytest.raises(InvalidInput) as caught:
        decode_instance(_written(ds))
    assert "rle: RLE frame 1 has 1 segments; 2 expected" in str(caught.value)


# --- JPEG 2000 -------------------------------------------------------------------------------


def _codestream(tail: bytes, psot: int | None = None) -> bytes:
    siz = b"\xff\x51" + (41).to_bytes(2, "big") + bytes(39)
    tile = b"\xff\x93" + b"tile data"
    sot_length = 12 + len(tile)
    sot = b"\xff\x90" + (10).to_bytes(2, "big") + (0).to_bytes(2, "big")
    sot += (sot_length if psot is None else psot).to_bytes(4, "big") + b"\x00\x01"
    return b"\xff\x4f" + siz + sot + tile + tail


def test_repair_j2k_drops_marker_segments_after_the_last_tile_part() -> None:
    comment = b"\xff\x64" + (11).to_bytes(2, "big") + b"\x00\x01PADDING"
    broken = _codestream(comment + b"\xff\xd9")
    assert repair_j2k(broken) == _codestream(b"\xff\xd9")
    assert repair_j2k(_codestream(b"\xff\xd9")) is None  # well formed
    assert repair_j2k(_codestream(comment + b"\xff\xd9", psot=0)) is None  # runs to EOC
    assert repair_j2k(b"\x00" + broken) is None


def test_966_is_decoded_after_the_repair(caplog: pytest.LogCaptureFixture) -> None:
    """Canon DX: a COM "PADDING" segment after the last tile-part; openjpeg and gdcm refuse
    the stream. Pixel-exact against its repaired twin: test_decoder_core."""
    with caplog.at_level(logging.WARNING, logger="services.decoder.codecs"):
        pixels = _pixels(_bytes("pylibjpeg-data/JPEG2000Lossless/966.dcm"))
    assert "dropped 13 bytes after the last tile-part" in caplog.text
    assert pixels.shape == (1, 2128, 2000, 1)


def test_codestream_geometry() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/JPEG2000.dcm")
    assert j2k_geometry(next(generate_frames(ds.PixelData, number_of_frames=1))) == (1024, 256, 1)
    ds = pydicom.dcmread(CORPUS / "pylibjpeg-data/JPEG2000/ELSCINT1_JP2vsJ2K.dcm")  # JP2 boxes
    assert j2k_geometry(next(generate_frames(ds.PixelData, number_of_frames=1))) == (512, 512, 1)
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_jpeg_dcmtk.dcm")
    header = jpeg_header(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert header is not None
    assert (header.precision, header.rows, header.cols, header.components) == (8, 100, 100, 3)
    ds = pydicom.dcmread(CORPUS / "pydicom-data/JLSL_16_15_1_1F.dcm")  # JPEG-LS SOF55
    header = jpeg_header(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert header is not None and (header.precision, header.rows) == (15, 128)
    assert jpeg_header(b"\xff\xd8\xff\xdb\x00\x01garbage") is None


# --- colour ----------------------------------------------------------------------------------


def test_ybr_conversion_matches_pydicom() -> None:
    values = np.random.default_rng(7).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    expected = convert_color_space(values.copy(), "YBR_FULL", "RGB")
    got = ybr_full_to_rgb(values.copy(), 8)
    difference = np.abs(got.astype(int) - expected.astype(int))
    # pydicom's matmul may use fused multiply-adds: a rounding tie can land on either side
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 2


def test_ybr_conversion_of_16_bit_data_uses_its_range() -> None:
    grey = np.full((1, 2, 2, 3), 1 << 11, dtype=np.uint16)  # Y = Cb = Cr = 2048 at 12 bits
    grey[..., 0] = [[0, 1000], [4095, 2048]]
    rgb = ybr_full_to_rgb(grey, 12)
    assert rgb[0, :, :, 0].tolist() == [[0, 1000], [4095, 2048]]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_fit_bits_stored() -> None:
    unsigned = np.array([0xF0FF, 0x0FFF], dtype=np.uint16)
    assert fit_bits_stored(unsigned, 12).tolist() == [0x00FF, 0x0FFF]
    signed = np.array([0x0800, 0x07FF, -1, 0x0FFF], dtype=np.int16)
    assert fit_bits_stored(signed, 12).tolist() == [-2048, 2047, -1, -1]
    floats = np.array([1.5], dtype=np.float32)
    assert fit_bits_stored(floats, 12) is floats


def test_deflated_image_frame_label() -> None:
    assert codecs.ts_label(UID("1.2.840.10008.1.2.8.1")).endswith(
        "(Deflated Image Frame Compression)"
    )


# --- found by fuzzing (tests/fuzz) -------------------------------------------------------------


class _Panic(BaseException):
    """Like pyo3's PanicException: a Rust panic surfaces as a BaseException."""


def test_a_codec_panic_falls_back_like_any_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def panicking(spec: codecs.PixelSpec) -> codecs.Decoded:
        raise _Panic("index out of bounds: the len is 2070 but the index is 2070")

    relative = "pydicom-testfiles/SC_rgb_rle.dcm"
    expected = _pixels(_bytes(relative))
    monkeypatch.setitem(codecs._CANDIDATES, "pylibjpeg", panicking)
    np.testing.assert_array_equal(_pixels(_bytes(relative)), expected)


def test_rle_whose_rows_and_columns_were_changed_is_invalid_input() -> None:
    """pylibjpeg-rle panics on it; pydicom's RLE plugin would return garbage with a warning."""
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/SC_rgb_rle_16bit.dcm")
    ds.Rows, ds.Columns = 23, 15
    with pytest.raises(InvalidInput) as caught:
        decode_instance(_written(ds))
    assert "Rows/Columns do not match the RLE data" in str(caught.value)


def test_photometric_interpretation_must_fit_samples_per_pixel() -> None:
    """Once made pydicom fall through to python-gdcm, which aborted the process."""
    ds = pydicom.dcmread(CORPUS / "pydicom-data/liver_nonbyte_aligned_j2k.dcm")
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(InvalidInput) as caught:
        decode_instance(_written(ds))
    assert str(caught.value) == (
        "Photometric Interpretation RGB needs 3 sample(s) per pixel; the file has 1"
    )


def test_a_malformed_transfer_syntax_uid_is_described_not_quoted() -> None:
    ds = pydicom.dcmread(CORPUS / "pydicom-testfiles/MR_small.dcm")
    data = _written(ds)
    label = str(ds.file_meta.TransferSyntaxUID).encode()  # 1.2.840.10008.1.2.1 + pad
    corrupt = data.replace(label + b"\x00", b"1.2\x01Quixotic^Zyxwvu\x07", 1)
    assert corrupt != data
    with pytest.raises(InvalidInput) as caught:
        decode_instance(corrupt)
    reason = str(caught.value)
    assert reason.isprintable() and "Quixotic" not in reason, reason
    assert "malformed UID value of 20 characters" in reason
