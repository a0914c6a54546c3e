"""Turn the bytes of one DICOM instance into stored pixel values and routing attributes.

Pure logic (no gRPC, no protobuf) so it can be tested on files alone. Every failure leaves
this module as a :class:`~services.common.errors.PlatformError` whose reason a person can act
on; pydicom and codec exceptions are translated at this one seam and never escape raw.
Patient identity (PatientName, PatientID, ...) is never read, copied or logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder  # re-exported as pydicom.pixels.get_decoder
from pydicom.pixels.utils import as_pixel_options, get_expected_length
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from services.common.errors import InvalidInput, PlatformError, TooLarge, UnsupportedInput
from services.common.images import DecodedImage, ImageAttributes

log = logging.getLogger(__name__)

_MiB = 2**20
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MAX_REASON = 200


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before any pixel is decoded, so one request cannot exhaust memory."""

    max_bytes: int = 512 * _MiB  # encoded instance size
    max_pixels: int = 2**28  # rows * cols * frames * samples
    max_decoded_bytes: int = 2048 * _MiB


def decode_instance(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode one DICOM instance to (frames, rows, cols, samples) stored values.

    No rescale or windowing is applied (the preprocessor owns every transform); YBR colour is
    converted to RGB by pydicom and reported as "RGB". Big-endian values come back in native
    byte order with the same dtype kind and size.
    """
    _check_raw_bytes(data, limits)
    ds = _read_dataset(data)
    try:
        return _decode_dataset(ds, data, limits)
    except PlatformError:
        raise
    except MemoryError as exc:
        raise TooLarge("not enough memory to decode this image") from exc
    except Exception as exc:  # the one seam where pydicom/codec errors become ours
        raise InvalidInput(f"could not decode the DICOM file: {_trim(exc)}") from exc


def _check_raw_bytes(data: bytes, limits: DecodeLimits) -> None:
    """Reject what is obviously not a decodable instance before pydicom sees it."""
    if not data:
        raise InvalidInput("empty input: no bytes to decode")
    if len(data) > limits.max_bytes:
        raise TooLarge(
            f"DICOM file is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes"
        )
    if data[:2] == b"\x1f\x8b":
        raise InvalidInput("input is gzip-compressed; decompress before sending")


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
        looks_like_dicom = any(k in ds for k in ("SOPClassUID", "Rows", *_PIXEL_KEYWORDS))
    except Exception as exc:
        raise InvalidInput(f"not a DICOM file: {_trim(exc)}") from exc
    if not looks_like_dicom:
        raise InvalidInput(
            "not a DICOM file: no 'DICM' preamble and no recognisable DICOM elements"
        )
    log.warning("DICOM file has no preamble/file meta; read it with force=True")
    return ds


def _decode_dataset(ds: Dataset, raw: bytes, limits: DecodeLimits) -> DecodedImage:
    """Check, decode and reshape; runs inside the exception-translating seam."""
    ts = _transfer_syntax(ds)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        tag = b"\x7f\xe0\x00\x10" if ts == ExplicitVRBigEndian else b"\xe0\x7f\x10\x00"
        if tag in raw:  # pydicom drops an element that runs past the end of the file
            raise InvalidInput(
                "the Pixel Data element could not be read completely; the file is probably "
                "truncated"
            )
        sop_class = str(ds.get("SOPClassUID") or "")
        label = UID(sop_class).name if sop_class else "not given"
        raise InvalidInput(f"DICOM file contains no Pixel Data (SOP class {label})")
    rows, cols, frames, samples = _check_limits(ds, limits)
    _check_decodable(ds, ts)

    try:
        arr, meta = get_decoder(ts).as_array(ds, **as_pixel_options(ds))
    except (PlatformError, MemoryError):
        raise
    except Exception as exc:  # codec message, e.g. a corrupt JPEG stream
        raise InvalidInput(f"could not decode {_ts_label(ts)} pixel data: {_trim(exc)}") from exc

    pixels = np.asarray(arr)
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    out_samples = pixels.size // max(1, rows * cols * frames)
    if out_samples * rows * cols * frames != pixels.size:
        raise InvalidInput(
            f"decoded pixel data has {pixels.size} values, which does not fit "
            f"{frames} frame(s) of {rows}x{cols} (samples per pixel {samples})"
        )
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    return DecodedImage(
        pixels=pixels.reshape(frames, rows, cols, out_samples),
        attributes=_attributes(ds, ts, photometric, frames),
    )


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax, inferred from the encoding when there is no file meta."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    inferred = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((bool(implicit), bool(little)))
    if inferred is None:
        raise InvalidInput("DICOM file has no Transfer Syntax UID and its encoding is unknown")
    ds.file_meta.TransferSyntaxUID = inferred
    return inferred


def _check_limits(ds: Dataset, limits: DecodeLimits) -> tuple[int, int, int, int]:
    """Read the image geometry and refuse oversized images before decoding anything."""
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            raise InvalidInput(f"DICOM file has pixel data but no {keyword} element")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    frames = _number_of_frames(ds)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if min(rows, cols, samples) < 1:
        raise InvalidInput(
            f"image geometry is invalid: {rows} rows x {cols} columns x {samples} samples"
        )
    pixels = rows * cols * frames * samples
    shape = f"{frames} frame(s) of {rows}x{cols} with {samples} sample(s)"
    if pixels > limits.max_pixels:
        raise TooLarge(
            f"image is {shape} = {pixels:,} pixel values; the limit is {limits.max_pixels:,}"
        )
    decoded_bytes = pixels * max(1, bits // 8)
    if decoded_bytes > limits.max_decoded_bytes:
        raise TooLarge(
            f"image is {shape} at {bits} bits = {decoded_bytes:,} bytes decoded; the limit is "
            f"{limits.max_decoded_bytes:,} bytes"
        )
    return rows, cols, frames, samples


def _number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, treating absent/empty/0 as one frame as pydicom does."""
    value = ds.get("NumberOfFrames")
    return max(1, int(value)) if value not in (None, "") else 1


def _check_decodable(ds: Dataset, ts: UID) -> None:
    """Fail early with a clear reason for unsupported syntaxes and short native pixel data."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnsupportedInput(f"transfer syntax {_ts_label(ts)} is not supported") from exc
    if not decoder.is_available:
        raise UnsupportedInput(
            f"no decoder plugin is installed for transfer syntax {_ts_label(ts)}"
        )
    if ts == RLELossless and int(ds.BitsAllocated) == 1:  # neither RLE plugin handles it
        raise UnsupportedInput(f"1-bit pixel data in {_ts_label(ts)} is not supported")
    if not ts.is_encapsulated:
        actual = len(next(ds[k].value for k in _PIXEL_KEYWORDS if k in ds) or b"")
        expected = get_expected_length(ds, unit="bytes")
        if actual < expected:
            raise InvalidInput(
                f"pixel data is truncated: expected {expected:,} bytes for the declared image "
                f"geometry, got {actual:,} bytes"
            )


def _attributes(ds: Dataset, ts: UID, photometric: str, frames: int) -> ImageAttributes:
    """Copy the routing/preprocessing attributes; deliberately no patient identity."""
    slope = _first_float(_functional("RescaleSlope", "PixelValueTransformationSequence", ds))
    intercept = _first_float(
        _functional("RescaleIntercept", "PixelValueTransformationSequence", ds)
    )
    spacing = _functional("PixelSpacing", "PixelMeasuresSequence", ds)
    if spacing in (None, ""):
        spacing = ds.get("ImagerPixelSpacing")
    return ImageAttributes(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        transfer_syntax_uid=str(ts),
        photometric_interpretation=photometric,
        bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
        pixel_representation=int(ds.get("PixelRepresentation") or 0),
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        window_center=_first_float(_functional("WindowCenter", "FrameVOILUTSequence", ds)),
        window_width=_first_float(_functional("WindowWidth", "FrameVOILUTSequence", ds)),
        pixel_spacing=_pair(spacing),
        number_of_frames=frames,
    )


def _functional(keyword: str, group: str, ds: Dataset) -> Any:
    """A value from the top level, else the shared functional groups of an enhanced image,
    else the per-frame groups when every frame agrees (a single value would be wrong otherwise).
    """
    if ds.get(keyword) not in (None, ""):
        return ds.get(keyword)
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and (value := _group_value(shared[0], group, keyword)) not in (None, ""):
        return value
    per_frame = [
        _group_value(item, group, keyword)
        for item in ds.get("PerFrameFunctionalGroupsSequence") or []
    ]
    distinct = {str(v) for v in per_frame}
    return per_frame[0] if per_frame and len(distinct) == 1 else None


def _group_value(item: Dataset, group: str, keyword: str) -> Any:
    """keyword inside the first item of functional group sequence `group`, if present."""
    sequence = item.get(group)
    return sequence[0].get(keyword) if sequence else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric element; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _pair(value: Any) -> tuple[float, float] | None:
    """Row/column spacing in mm, or None when absent, malformed or not positive."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        first, second = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (first, second) if first > 0 and second > 0 else None


def _ts_label(ts: UID) -> str:
    return f"{ts} ({ts.name})" if ts.name != str(ts) else f"{ts} (unknown)"


def _trim(exc: BaseException) -> str:
    """The exception's message on one line, short enough for a client-facing reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
