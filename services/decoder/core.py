"""Turn the bytes of one DICOM instance into stored pixel values and routing attributes.

Pure logic (no gRPC, no protobuf) so it can be tested on files alone. Every failure leaves
this module as a :class:`~services.common.errors.PlatformError` whose reason a person can act
on; pydicom and codec exceptions are translated at this one seam and never escape raw.
Patient identity (PatientName, PatientID, ...) is never read, copied or logged.

Which codec decodes which transfer syntax, and in what order, is :mod:`.codecs`; colour
conversion is :mod:`.colour`; the attributes are :mod:`.attributes`.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.common.dicom import PIXEL_KEYWORDS
from services.common.errors import InvalidInput, PlatformError, TooLarge, UnsupportedInput
from services.common.images import DecodedImage
from services.common.settings import DecodeLimits
from services.decoder.attributes import image_attributes, int_or
from services.decoder.codecs import (
    CHAINS,
    NATIVE_SYNTAXES,
    Decoded,
    DeflatedImageFrame,
    PixelSpec,
    decode_pixels,
    ts_label,
)
from services.decoder.colour import YBR_FULL_LIKE, fit_bits_stored, palette_to_rgb, ybr_full_to_rgb
from services.decoder.header import CheckedHeader

log = logging.getLogger(__name__)

_MiB = 2**20
_MAX_REASON = 200
_INFLATE_CHUNK = 16 * _MiB
_SAMPLES_FOR = {
    **dict.fromkeys(("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"), 1),
    **dict.fromkeys(("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"), 3),
    **dict.fromkeys(("YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV"), 3),
}

DEFAULT_LIMITS = DecodeLimits()


def decode_instance(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode one DICOM instance to (frames, rows, cols, samples) stored values.

    No rescale or windowing is applied (the preprocessor owns every transform). Values are
    masked to Bits Stored (sign-extended when signed), in native byte order. YBR colour and
    PALETTE COLOR come back as RGB and are reported as "RGB"; MONOCHROME1 stays MONOCHROME1.
    """
    try:
        _check_raw_bytes(data, limits)
        _check_deflated_dataset(data, limits)
        ds = _read_dataset(data)
        return _decode_dataset(ds, data, limits)
    except PlatformError as exc:
        exc.reason = printable(exc.reason)
        exc.args = (exc.reason,)
        raise
    except MemoryError as exc:
        raise TooLarge("not enough memory to decode this image") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the one seam where pydicom/codec errors (and pyo3
        # panics, which are BaseExceptions) become ours
        raise InvalidInput(f"could not decode the DICOM file: {_trim(exc)}") from exc


# Decoded by numpy and zlib alone, with every cap checked from the header first: nothing that
# can crash, hang or balloon, so these are decoded in the service process, without the hop to
# a worker (~20 ms for a 7 MB radiograph). Everything else goes to the worker pool.
IN_PROCESS_SYNTAXES = NATIVE_SYNTAXES | {DeflatedImageFrame}


def decodes_in_process(data: bytes) -> bool:
    """Whether the file meta names a syntax of IN_PROCESS_SYNTAXES (a header-only read)."""
    stream = BytesIO(data)
    try:
        read_preamble(stream, False)
        ts = _read_file_meta_info(stream).get("TransferSyntaxUID")
    except Exception:  # no or broken file meta: the worker will say what is wrong
        return False
    # A corrupt value may be anything (a multi-value, bytes): only a UID string can match.
    return isinstance(ts, str) and ts in IN_PROCESS_SYNTAXES


def _check_raw_bytes(data: bytes, limits: DecodeLimits) -> None:
    """Reject what is obviously not a decodable instance before pydicom sees it."""
    if not data:
        raise InvalidInput("empty input: no bytes to decode")
    if len(data) > limits.max_encoded_bytes:
        raise TooLarge(
            f"DICOM file is {len(data):,} bytes; the limit is {limits.max_encoded_bytes:,} bytes"
        )
    if data[:2] == b"\x1f\x8b":
        raise InvalidInput("input is gzip-compressed; decompress before sending")


def _check_deflated_dataset(data: bytes, limits: DecodeLimits) -> None:
    """A Deflated Explicit VR Little Endian data set is inflated whole by pydicom before any
    header can be read: count what it inflates to first, in bounded chunks."""
    if DeflatedExplicitVRLittleEndian.encode() not in data[:8192]:
        return
    stream = BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception:  # not a well-formed file meta: the parser reports it below
        return
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    compressed = data[stream.tell() :]
    cap = min(
        limits.max_encoded_bytes + limits.max_decoded_bytes,
        int(max(1, len(compressed)) * limits.max_compression_ratio),
    )
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), compressed, 0
    try:
        while pending and total <= cap:
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise InvalidInput(f"the deflate-compressed data set is corrupt (zlib: {exc})") from exc
    if total > cap:
        raise TooLarge(
            f"the deflate-compressed data set of {len(compressed):,} bytes inflates to more "
            f"than {cap:,} bytes (limits: {limits.max_compression_ratio:,.0f}:1 and "
            f"{limits.max_encoded_bytes + limits.max_decoded_bytes:,} bytes); refusing a possible "
            "decompression bomb"
        )


def _read_dataset(data: bytes) -> Dataset:
    """Parse with pydicom; accept files without preamble/meta only if they look like DICOM."""
    try:
        return pydicom.dcmread(BytesIO(data))
    except InvalidDicomError:
        pass  # no preamble or file meta: retried below with force=True
    except Exception as exc:
        raise InvalidInput(f"DICOM file could not be parsed: {_trim(exc)}") from exc
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        looks_like_dicom = any(k in ds for k in ("SOPClassUID", "Rows", *PIXEL_KEYWORDS))
    except Exception as exc:
        raise InvalidInput(f"not a DICOM file: {_trim(exc)}") from exc
    if not looks_like_dicom:
        raise InvalidInput(
            "not a DICOM file: no 'DICM' preamble and no recognisable DICOM elements"
        )
    log.warning("DICOM file has no preamble/file meta; read it with force=True")
    return ds


def _decode_dataset(ds: Dataset, raw: bytes, limits: DecodeLimits) -> DecodedImage:
    """Check, decode and finish; runs inside the exception-translating seam."""
    header = CheckedHeader(ds)
    ts, ts_given = _transfer_syntax(ds)
    keyword = _pixel_keyword(header, ts, raw)
    spec = _pixel_spec(header, ts, keyword, ts_given)
    out_samples, out_itemsize = _output_layout(header, spec)
    _check_limits(spec, out_samples, out_itemsize, limits)
    if spec.ts in NATIVE_SYNTAXES:
        _check_native_length(spec)
    elif spec.ts not in CHAINS:
        raise UnsupportedInput(f"transfer syntax {ts_label(ts)} is not supported")

    decoded = decode_pixels(spec)
    pixels, photometric, bits_stored, representation = _finish(decoded, spec, ds)
    little_endian = ts != ExplicitVRBigEndian
    attributes = image_attributes(
        header,
        ts=str(ts),
        photometric=photometric,
        frames=spec.frames,
        bits_stored=bits_stored,
        pixel_representation=representation,
        little_endian=little_endian,
    )
    return DecodedImage(pixels=pixels, attributes=attributes)


def _transfer_syntax(ds: Dataset) -> tuple[UID, bool]:
    """The file's transfer syntax and whether the file gave it (else inferred from the
    encoding pydicom detected)."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        return UID(str(ts)), True
    implicit, little = ds.original_encoding
    inferred = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((bool(implicit), bool(little)))
    if inferred is None:
        raise InvalidInput("DICOM file has no Transfer Syntax UID and its encoding is unknown")
    ds.file_meta.TransferSyntaxUID = inferred
    log.warning("DICOM file has no Transfer Syntax UID; read it as %s", inferred.name)
    return inferred, False


def _pixel_keyword(header: CheckedHeader, ts: UID, raw: bytes) -> str:
    ds = header.ds
    present = [k for k in PIXEL_KEYWORDS if k in ds]
    if not present:
        tag = b"\x7f\xe0\x00\x10" if ts == ExplicitVRBigEndian else b"\xe0\x7f\x10\x00"
        if tag in raw:  # pydicom drops an element that runs past the end of the file
            raise InvalidInput(
                "pixel data truncated: the Pixel Data element could not be read completely; "
                "the file is probably cut short"
            )
        sop_class = header.text("SOPClassUID")
        if sop_class:
            label = UID(sop_class).name
        else:
            label = "invalid" if "SOPClassUID" in header.invalid else "not given"
        raise InvalidInput(f"DICOM file contains no Pixel Data (SOP class {label})")
    if len(present) > 1:
        raise InvalidInput(f"DICOM file has more than one pixel data element: {present}")
    if not ds[present[0]].value:
        raise InvalidInput("the Pixel Data element is empty")
    return present[0]


def _pixel_spec(header: CheckedHeader, ts: UID, keyword: str, ts_given: bool) -> PixelSpec:
    """The Image Pixel module, validated with reasons a person can act on."""
    ds, get = header.ds, header.get
    missing_ts = "" if ts_given else " (and the file meta has no Transfer Syntax UID)"
    required = (
        ("Rows", "Columns") if keyword != "PixelData" else ("Rows", "Columns", "BitsAllocated")
    )
    for name in required:
        if get(name, max_values=1) in (None, ""):
            what = "an invalid" if name in header.invalid else "no"
            raise InvalidInput(
                f"DICOM file has pixel data but {what} {name} element{missing_ts}; "
                "it lacks the Image Pixel module"
            )
    rows, cols = int(get("Rows")), int(get("Columns"))
    floating = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword)
    bits_allocated = floating or int(get("BitsAllocated"))
    bits_stored = int_or(get("BitsStored", max_values=1), bits_allocated) or bits_allocated
    samples = int_or(get("SamplesPerPixel", max_values=1), 1)
    representation = int_or(get("PixelRepresentation", max_values=1), 0)
    if min(rows, cols, samples) < 1:
        raise InvalidInput(
            f"image geometry is invalid: {rows} rows x {cols} columns x {samples} samples"
        )
    if bits_allocated != 1 and (bits_allocated % 8 or not 8 <= bits_allocated <= 64):
        raise InvalidInput(f"Bits Allocated {bits_allocated} is invalid (1 or 8, 16, ... 64)")
    if not 1 <= bits_stored <= bits_allocated:
        raise InvalidInput(
            f"Bits Stored {bits_stored} does not fit Bits Allocated {bits_allocated}"
        )
    if representation not in (0, 1):
        raise InvalidInput(f"Pixel Representation {representation} is invalid (0 or 1)")
    photometric = header.text("PhotometricInterpretation").upper()
    if not photometric and "PhotometricInterpretation" in header.invalid:
        raise InvalidInput("the Photometric Interpretation value is invalid for its VR (CS)")
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
        log.warning("no Photometric Interpretation; assuming %s", photometric)
    needed = _SAMPLES_FOR.get(photometric)
    if needed is not None and samples != needed:
        raise InvalidInput(
            f"Photometric Interpretation {photometric} needs {needed} sample(s) per pixel; "
            f"the file has {samples}"
        )
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    spec = PixelSpec(
        ts=ts,
        rows=rows,
        cols=cols,
        frames=1,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        photometric=photometric,
        planar_configuration=int_or(get("PlanarConfiguration", max_values=1), 0),
        keyword=keyword,
        pixel_vr=str(ds[keyword].VR),
        data=bytes(ds[keyword].value),
        extended_offsets=extended,
    )
    get("NumberOfFrames")  # recorded as invalid when so; its reader below never quotes it
    return _with_frames(spec, ds.get("NumberOfFrames"))


def _with_frames(spec: PixelSpec, value: Any) -> PixelSpec:
    """Number of Frames, treating absent/empty/0 as one frame as pydicom does. An unreadable
    value (e.g. '1A') is inferred from the length of native pixel data when it divides."""
    if value in (None, ""):
        return spec
    frames = int_or(value, -1)
    if frames >= 0:
        return _replace_frames(spec, max(1, frames))
    per_frame = _native_bytes(spec, 1)
    if spec.ts in NATIVE_SYNTAXES and per_frame and len(spec.data) // per_frame >= 1:
        inferred = len(spec.data) // per_frame
        log.warning("Number of Frames is not a number; %d frames by the data length", inferred)
        return _replace_frames(spec, inferred)
    # The value is not quoted: a corrupt element may hold bytes of others (patient data).
    raise InvalidInput(
        f"Number of Frames is not a valid number of frames ({len(str(value))} characters that "
        "are not a non-negative integer)"
    )


def _replace_frames(spec: PixelSpec, frames: int) -> PixelSpec:
    return dataclasses.replace(spec, frames=frames)


def _native_bytes(spec: PixelSpec, frames: int) -> int:
    """Bytes of `frames` natively encoded frames (YBR_FULL_422 stores 2 values per pixel)."""
    values = frames * spec.frame_values
    if spec.photometric == "YBR_FULL_422" and spec.samples == 3:
        values = values // 3 * 2
    return (values * spec.bits_allocated + 7) // 8


def _output_layout(header: CheckedHeader, spec: PixelSpec) -> tuple[int, int]:
    """(samples, bytes per sample) of the returned array: a palette expands to RGB."""
    if spec.photometric == "PALETTE COLOR":
        descriptor = header.get("RedPaletteColorLookupTableDescriptor", max_values=3) or [0, 0, 8]
        bits = int(descriptor[2]) if len(descriptor) == 3 else 8
        return 3, 2 if bits > 8 else 1
    return spec.samples, spec.dtype.itemsize


def _check_limits(spec: PixelSpec, samples: int, itemsize: int, limits: DecodeLimits) -> None:
    """Refuse oversized images and decompression bombs before decoding anything."""
    pixels = spec.rows * spec.cols * spec.frames * spec.samples
    shape = f"{spec.frames} frame(s) of {spec.rows}x{spec.cols} with {spec.samples} sample(s)"
    if pixels > limits.max_pixels:
        raise TooLarge(
            f"image is {shape} = {pixels:,} pixel values; the limit is {limits.max_pixels:,}"
        )
    decoded = spec.rows * spec.cols * spec.frames * samples * itemsize
    if decoded > limits.max_decoded_bytes:
        raise TooLarge(
            f"image is {shape} at {spec.bits_allocated} bits = {decoded:,} bytes decoded; the "
            f"limit is {limits.max_decoded_bytes:,} bytes"
        )
    if spec.ts in NATIVE_SYNTAXES or decoded <= limits.compression_check_min_bytes:
        return
    encoded, expanded = len(spec.data), _native_bytes(spec, spec.frames)
    if expanded > encoded * limits.max_compression_ratio:
        raise TooLarge(
            f"{encoded:,} bytes of compressed pixel data would expand to {expanded:,} bytes "
            f"({expanded / max(1, encoded):,.0f}:1, the limit is "
            f"{limits.max_compression_ratio:,.0f}:1); refusing a possible decompression bomb"
        )


def _check_native_length(spec: PixelSpec) -> None:
    expected = _native_bytes(spec, spec.frames)
    if len(spec.data) < expected:
        raise InvalidInput(
            f"pixel data truncated: expected {expected:,} bytes for the declared image "
            f"geometry, got {len(spec.data):,} bytes"
        )


def _finish(decoded: Decoded, spec: PixelSpec, ds: Dataset) -> tuple[np.ndarray, str, int, int]:
    """Bits Stored masking, then colour: (pixels, photometric, bits stored, representation)."""
    pixels = decoded.pixels
    if pixels.dtype != spec.dtype:
        pixels = pixels.astype(spec.dtype)
    if spec.bits_allocated > 1:
        pixels = fit_bits_stored(pixels, spec.bits_stored)
    photometric, bits, representation = (
        decoded.photometric,
        spec.bits_stored,
        spec.pixel_representation,
    )
    if photometric in YBR_FULL_LIKE and spec.samples == 3:
        pixels = ybr_full_to_rgb(pixels, bits)
        photometric = "RGB"
    elif photometric == "PALETTE COLOR":
        pixels, bits = palette_to_rgb(pixels, ds, spec.ts != ExplicitVRBigEndian)
        photometric, representation = "RGB", 0
    return pixels, photometric, bits, representation


def _trim(exc: BaseException) -> str:
    """The exception's message on one line, short enough for a client-facing reason."""
    text = printable(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def printable(text: str) -> str:
    """One printable line: control characters (from corrupt values) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
