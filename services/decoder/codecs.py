"""Pixel-data decoders per transfer syntax, fastest correct one first, with fallbacks.

Each transfer syntax has an ordered chain of candidates (:data:`CHAINS`). A candidate is
either a pydicom decoding plugin (pylibjpeg, gdcm, pillow, pyjpegls) run through pydicom's
plugin selection (``decoding_plugin=``), or one of the decoders here for what no library does:

* ``gdcm-frames``: python-gdcm's JPEG codecs fed frame by frame (JPEG Spectral Selection
  .4.53, Full Progression .4.55, and 12-bit JPEG Extended streams libjpeg rejects);
* ``deflate``: Deflated Image Frame Compression (1.2.840.10008.1.2.8.1);
* ``rle``: RLE Lossless in numpy/Python, including 1 bit allocated (both RLE plugins refuse,
  and python-gdcm's reader aborts the process on it);
* ``j2k-repair``: openjpeg on JPEG 2000 codestreams with marker segments between the last
  tile-part and EOC removed (seen from a Canon DX: a COM "PADDING" segment).

The chains were picked by timing every candidate on the shared corpus and checking its
pixels against the others and against the corpus' uncompressed twins. Every candidate
returns stored values in the stored colour space (``raw``), so YBR -> RGB happens exactly
once, in :mod:`.colour`.

Codec crash risk: python-gdcm is C++ and can abort the process on malformed input (it does
on a JPEG 2000 frame whose photometric interpretation contradicts its components, which the
header checks in core now refuse first); Rust codecs (pylibjpeg-rle) panic, which is caught.
Decoding runs in worker processes so that an abort costs one request.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from services.common.errors import InvalidInput, PlatformError, TooLarge, UnsupportedInput
from services.decoder import gpu

log = logging.getLogger(__name__)


class _DropPluginTracebacks(logging.Filter):
    """pydicom logs every failing plugin with its traceback; a failure here only means the
    next candidate runs, and the chain logs one line (or raises one reason) itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_DropPluginTracebacks())

DeflatedImageFrame = UID("1.2.840.10008.1.2.8.1")
JPEGSpectralSelection = UID("1.2.840.10008.1.2.4.53")
JPEGFullProgression = UID("1.2.840.10008.1.2.4.55")

NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
_JPEG_DCT = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGSpectralSelection, JPEGFullProgression}
)
_JPEG_LS = frozenset({JPEGLSLossless, JPEGLSNearLossless})
_J2K = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})

# Fastest correct candidate first (timings on the corpus, 2-CPU x86_64, one process):
#   RLE: pylibjpeg-rle 6x faster than pydicom's numpy RLE. The fallback is the strict RLE
#   here, not pydicom's: that one accepts segments far longer than the geometry (a mutated
#   Rows/Columns then "decodes" to garbage) with only a warning.
#   JPEG baseline/extended 8-bit: Pillow (libjpeg-turbo) 3x faster than pylibjpeg/gdcm; its
#   pixels equal dcmtk's decompressions in the corpus (the *_dcmd files) and gdcm's, where
#   pylibjpeg (libjpeg 9) differs by 1-5 (IDCT and chroma upsampling rounding).
#   JPEG lossless (.57/.70): gdcm 2-2.6x faster than pylibjpeg, identical pixels.
#   JPEG-LS: pyjpegls (CharLS) 1.4x faster than gdcm, 4x faster than pylibjpeg.
#   JPEG 2000 lossy (.91): pylibjpeg-openjpeg 1.1-1.5x faster than gdcm. Lossless (.90): gdcm
#   is 1.25x faster over the corpus (1.5x on the 2k radiographs: 529 against 785 ms for
#   RG1_J2KR), identical pixels; openjpeg first only on small images. Pillow is wrong on one
#   TOSHIBA file (signedness) and refuses two others, so it is not used.
CHAINS: dict[UID, tuple[str, ...]] = {
    **{ts: ("native",) for ts in NATIVE_SYNTAXES},
    RLELossless: ("pylibjpeg", "rle"),
    JPEGBaseline8Bit: ("pillow", "pylibjpeg", "gdcm-frames"),
    JPEGExtended12Bit: ("pillow", "pylibjpeg", "gdcm-frames"),
    JPEGSpectralSelection: ("gdcm-frames",),
    JPEGFullProgression: ("gdcm-frames",),
    JPEGLossless: ("gdcm", "pylibjpeg"),
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLSLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    JPEGLSNearLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    # j2k-repair first: it steps aside at once (NotApplicable) unless a codestream has marker
    # segments after its last tile-part, which openjpeg and gdcm each take seconds to refuse.
    # nvimgcodec (GPU, optional) steps aside at once where the package or a GPU is missing.
    JPEG2000Lossless: ("j2k-repair", "nvimgcodec", "gdcm", "pylibjpeg"),
    JPEG2000: ("j2k-repair", "nvimgcodec", "pylibjpeg", "gdcm"),
    HTJ2KLossless: ("j2k-repair", "nvimgcodec", "pylibjpeg"),
    HTJ2KLosslessRPCL: ("j2k-repair", "nvimgcodec", "pylibjpeg"),
    HTJ2K: ("j2k-repair", "nvimgcodec", "pylibjpeg"),
    DeflatedImageFrame: ("deflate",),
}

_MAX_DETAIL = 160  # characters of one decoder's message in a combined reason
# Reference decoders: when one rejects a stream, another decoder's output is accepted only if a
# third agrees with it exactly. CharLS (pyjpegls) is the JPEG-LS reference implementation; on
# streams it finds structurally invalid, libjpeg's JPEG-LS decoder (pylibjpeg) "succeeds" and
# returns garbage (fuzzed corpus files: 32-67% of the pixels wrong), while on a real lossless
# MR that CharLS rejects, libjpeg and GDCM (its own, older CharLS) agree pixel for pixel. So the
# chain goes on after the reference's verdict, and two independent decoders must concur.
_REFERENCE = {"pyjpegls"}
_MAX_REASON = 420


class NotApplicable(Exception):
    """This candidate does not handle this image (not installed, or not its kind of data)."""


@dataclass(frozen=True)
class PixelSpec:
    """The Image Pixel module, validated, plus where the pixel data is."""

    ts: UID
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    pixel_vr: str
    data: bytes  # the element's value: native bytes, or encapsulated items
    extended_offsets: tuple[Any, Any] | None = None

    @property
    def dtype(self) -> np.dtype:
        """The native-order dtype of the decoded values (1 bit allocated -> uint8)."""
        if self.keyword == "FloatPixelData":
            return np.dtype(np.float32)
        if self.keyword == "DoubleFloatPixelData":
            return np.dtype(np.float64)
        size = max(1, self.bits_allocated // 8)
        kind = "i" if self.pixel_representation == 1 and self.bits_allocated > 1 else "u"
        return np.dtype(f"{kind}{size}")

    @property
    def frame_values(self) -> int:
        return self.rows * self.cols * self.samples

    @property
    def frame_bytes(self) -> int:
        """Bytes of one natively encoded frame (bit-packed when 1 bit is allocated)."""
        return (self.frame_values * self.bits_allocated + 7) // 8

    def options(self) -> dict[str, Any]:
        """pydicom decoding options; the source is always the pixel data buffer."""
        opts: dict[str, Any] = {
            "rows": self.rows,
            "columns": self.cols,
            "number_of_frames": self.frames,
            "samples_per_pixel": self.samples,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric,
            "pixel_keyword": self.keyword,
            "pixel_vr": self.pixel_vr,
            "allow_excess_frames": False,
        }
        if self.samples > 1:
            opts["planar_configuration"] = self.planar_configuration
        if self.extended_offsets is not None:
            opts["extended_offsets"] = self.extended_offsets
        return opts

    def iter_frames(self) -> Iterator[bytes]:
        """The encoded frames of encapsulated pixel data, exactly ``frames`` of them."""
        found = 0
        try:
            for frame in generate_frames(
                self.data, number_of_frames=self.frames, extended_offsets=self.extended_offsets
            ):
                if found == self.frames:
                    return
                found += 1
                yield frame
        except (ValueError, EOFError, IndexError) as exc:  # cut inside an item header
            raise InvalidInput(
                f"pixel data truncated: the encapsulated Pixel Data is cut after {found} of "
                f"{self.frames} frame(s) ({_one_line(exc)})"
            ) from exc
        if found < self.frames:
            raise InvalidInput(
                f"pixel data truncated: the header declares {self.frames} frames but the "
                f"encapsulated Pixel Data holds {found}"
            )


@dataclass(frozen=True)
class Decoded:
    """Stored values (frames, rows, cols, samples) in the colour space ``photometric``."""

    pixels: np.ndarray
    photometric: str
    decoder: str


Candidate = Callable[[PixelSpec], Decoded]


def decode_pixels(spec: PixelSpec) -> Decoded:
    """Run the transfer syntax's chain; the first candidate that decodes wins. A codec's error
    passes the image to the next capable codec; only when every one fails is it refused, with
    each codec's reason. After a reference decoder's rejection a result needs a second opinion.
    """
    chain = CHAINS.get(spec.ts)
    if chain is None:
        raise UnsupportedInput(f"transfer syntax {ts_label(spec.ts)} is not supported")
    if spec.ts not in NATIVE_SYNTAXES:
        check_codestream_headers(spec)
    failures: list[tuple[str, BaseException]] = []
    skipped: list[str] = []
    unconfirmed: Decoded | None = None
    for name in chain:
        try:
            decoded = _CANDIDATES[name](spec)
        except NotApplicable as exc:
            skipped.append(f"{name}: {exc}")
            continue
        except (TooLarge, MemoryError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a codec's complaint, or a Rust panic (pyo3 raises
            # PanicException, a BaseException, e.g. from pylibjpeg-rle): try the next one
            log.debug("%s could not decode %s: %s", name, spec.ts, _one_line(exc))
            failures.append((name, exc))
            continue
        if any(n in _REFERENCE for n, _ in failures):
            if unconfirmed is None:
                unconfirmed = decoded
                continue
            if not np.array_equal(unconfirmed.pixels, decoded.pixels):
                failures.append(
                    (name, _Disagree(f"its pixels differ from {unconfirmed.decoder}'s"))
                )
                break
            decoded = unconfirmed
        if failures:
            log.warning(
                "decoded %s with %s after %s failed",
                ts_label(spec.ts),
                decoded.decoder if unconfirmed is None else f"{unconfirmed.decoder} and {name}",
                ", ".join(f"{n} ({_one_line(e)[:80]})" for n, e in failures),
            )
        return decoded
    if unconfirmed is not None and not any(isinstance(e, _Disagree) for _, e in failures):
        failures.append(
            (unconfirmed.decoder, _Disagree("decoded, but no second decoder could confirm it"))
        )
    failures.sort(key=lambda failure: chain.index(failure[0]) if failure[0] in chain else 0)
    raise _chain_failure(spec, failures, skipped)


class _Disagree(Exception):
    """A decoder's output that a reference decoder's rejection leaves unconfirmed."""


def _chain_failure(
    spec: PixelSpec, failures: list[tuple[str, BaseException]], skipped: list[str]
) -> PlatformError:
    label = ts_label(spec.ts)
    if not failures:
        why = "; ".join(skipped) or "no decoder"
        return UnsupportedInput(_cap(f"no installed decoder can decode {label} pixel data ({why})"))
    domain = [e for _, e in failures if isinstance(e, PlatformError)]
    if len(failures) == 1 and domain:  # our own decoder already said exactly what is wrong
        return domain[0]
    details = "; ".join(f"{name}: {_one_line(exc)[:_MAX_DETAIL]}" for name, exc in failures)
    payload = _payload(spec.ts)
    return InvalidInput(
        _cap(f"could not decode the {label} pixel data: the {payload} is corrupt ({details})")
    )


def _payload(ts: UID) -> str:
    if ts in _JPEG_DCT or ts in (JPEGLossless, JPEGLosslessSV1):
        return "JPEG codestream"
    if ts in _JPEG_LS:
        return "JPEG-LS codestream"
    if ts in (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K):
        return "HTJ2K codestream"
    if ts in _J2K:
        return "JPEG 2000 codestream"
    if ts == RLELossless:
        return "RLE data"
    if ts == DeflatedImageFrame:
        return "deflated frame data"
    return "pixel data"


# --- pydicom plugins -------------------------------------------------------------------


def _plugin(name: str) -> Candidate:
    def run(spec: PixelSpec) -> Decoded:
        decoder = get_decoder(spec.ts)
        if name and name not in decoder.available_plugins:
            raise NotApplicable("not installed")
        if (why := _not_for(name, spec)) is not None:
            raise NotApplicable(why)
        arr, meta = decoder.as_array(spec.data, decoding_plugin=name, raw=True, **spec.options())
        photometric = str(meta.get("photometric_interpretation") or spec.photometric)
        return Decoded(to_4d(np.asarray(arr), spec), photometric, name or "pydicom-native")

    return run


def _not_for(name: str, spec: PixelSpec) -> str | None:
    """Why a plugin is known to refuse this image, so it is not tried (and logged) at all."""
    if spec.ts == RLELossless and spec.bits_allocated == 1 and name == "pylibjpeg":
        return "pylibjpeg-rle does not handle 1 bit allocated"
    if name == "pillow" and spec.ts in _JPEG_DCT:
        header = jpeg_header(next(spec.iter_frames(), b""))
        if header is not None and header.precision > 8:
            return f"Pillow decodes 8-bit JPEG only; this stream has {header.precision}-bit samples"
    return None


def to_4d(arr: np.ndarray, spec: PixelSpec) -> np.ndarray:
    """Reshape a decoder's output to (frames, rows, cols, samples), checking its size."""
    expected = spec.frames * spec.frame_values
    if arr.size != expected:
        raise InvalidInput(
            f"decoded pixel data has {arr.size:,} values; the header's {spec.frames} frame(s) of "
            f"{spec.rows}x{spec.cols}x{spec.samples} need {expected:,}"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr.reshape(spec.frames, spec.rows, spec.cols, spec.samples)


# --- frame-by-frame decoders -----------------------------------------------------------


def _frames_into(spec: PixelSpec, decode_frame: Callable[[bytes, int], np.ndarray]) -> np.ndarray:
    out = np.empty((spec.frames, spec.rows, spec.cols, spec.samples), dtype=spec.dtype)
    for index, frame in enumerate(spec.iter_frames()):
        values = decode_frame(frame, index)
        if values.size != spec.frame_values:
            raise InvalidInput(
                f"frame {index + 1} decoded to {values.size:,} values; "
                f"{spec.rows}x{spec.cols}x{spec.samples} = {spec.frame_values:,} expected"
            )
        out[index] = values.reshape(spec.rows, spec.cols, spec.samples)
    return out


def native_frame(buffer: bytes, spec: PixelSpec) -> np.ndarray:
    """One natively encoded little-endian frame (rows, cols, samples)."""
    if spec.bits_allocated == 1:
        bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
        return bits[: spec.frame_values].reshape(spec.rows, spec.cols, spec.samples)
    values = np.frombuffer(buffer, dtype=spec.dtype.newbyteorder("<"), count=spec.frame_values)
    if spec.samples > 1 and spec.planar_configuration == 1:
        planes = values.reshape(spec.samples, spec.rows, spec.cols)
        return np.moveaxis(planes, 0, -1).astype(spec.dtype)
    return values.reshape(spec.rows, spec.cols, spec.samples).astype(spec.dtype)


def _deflate(spec: PixelSpec) -> Decoded:
    """Deflated Image Frame Compression: each frame is a raw deflate stream (RFC 1951) of the
    frame's native little-endian pixel data, bit-packed from a byte boundary for 1 bit."""
    expected = spec.frame_bytes

    def frame(data: bytes, index: int) -> np.ndarray:
        return native_frame(_inflate(data, expected, index), spec)

    return Decoded(_frames_into(spec, frame), spec.photometric, "deflate")


def _inflate(data: bytes, expected: int, index: int) -> bytes:
    error: zlib.error | None = None
    for wbits in (-15, 47):  # raw deflate as the standard says; zlib/gzip wrapped, leniently
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, expected + 1)  # never inflate past the geometry
        except zlib.error as exc:
            error = error or exc
            continue
        if len(out) > expected:
            raise InvalidInput(
                f"deflated frame {index + 1} inflates to more than the {expected:,} bytes its "
                "geometry allows"
            )
        if len(out) < expected:
            raise InvalidInput(
                f"pixel data truncated: deflated frame {index + 1} inflates to {len(out):,} "
                f"bytes; {expected:,} expected"
            )
        return out
    raise InvalidInput(f"deflated frame data is corrupt (frame {index + 1}: zlib: {error})")


def _rle(spec: PixelSpec) -> Decoded:
    """RLE Lossless (PS3.5 G): one PackBits segment per byte plane, most significant first;
    with 1 bit allocated a frame is one segment of bit-packed pixels per sample."""
    if spec.bits_allocated == 1:
        planes, plane_bytes = spec.samples, (spec.rows * spec.cols + 7) // 8
    else:
        planes, plane_bytes = spec.samples * (spec.bits_allocated // 8), spec.rows * spec.cols
    if planes > 15:
        raise NotApplicable(f"{planes} segments needed; RLE allows 15")

    def frame(data: bytes, index: int) -> np.ndarray:
        if len(data) < 64:
            raise InvalidInput(f"pixel data truncated: RLE frame {index + 1} has no full header")
        header = np.frombuffer(data[:64], dtype="<u4")
        count = int(header[0])
        if count != planes:
            raise InvalidInput(
                f"RLE frame {index + 1} has {count} segments; {planes} expected for "
                f"{spec.samples} sample(s) of {spec.bits_allocated} bits"
            )
        offsets = [int(o) for o in header[1 : count + 1]] + [len(data)]
        segments = [
            packbits(data[offsets[i] : offsets[i + 1]], plane_bytes, index) for i in range(count)
        ]
        if spec.bits_allocated == 1:
            samples = [
                np.unpackbits(np.frombuffer(s, np.uint8), bitorder="little")[
                    : spec.rows * spec.cols
                ]
                for s in segments
            ]
            return np.stack(samples, axis=-1)
        size = spec.bits_allocated // 8
        raw = np.stack([np.frombuffer(s, np.uint8) for s in segments], axis=-1)
        # (pixels, samples * size) with the most significant byte first -> big-endian ints
        return raw.reshape(-1, spec.samples, size).copy().view(spec.dtype.newbyteorder(">"))

    return Decoded(_frames_into(spec, frame), spec.photometric, "rle")


def packbits(segment: bytes, expected: int, index: int) -> bytes:
    """Decode one PackBits segment to exactly ``expected`` bytes. One byte more is tolerated
    (an even-length pad); anything longer means the header's geometry is not this data's."""
    out = bytearray()
    position, end, limit = 0, len(segment), expected + 1
    while position < end and len(out) <= limit:
        header = segment[position]
        position += 1
        if header < 128:  # literal run of header + 1 bytes
            out += segment[position : position + header + 1]
            position += header + 1
        elif header > 128:  # the next byte repeated 257 - header times
            if position < end:
                out += segment[position : position + 1] * (257 - header)
            position += 1
    if len(out) > limit:
        raise InvalidInput(
            f"an RLE segment of frame {index + 1} holds more than the {expected:,} bytes the "
            "image geometry allows: Rows/Columns do not match the RLE data"
        )
    if len(out) < expected:
        raise InvalidInput(
            f"pixel data truncated: an RLE segment of frame {index + 1} decodes to "
            f"{len(out):,} bytes; {expected:,} expected"
        )
    return bytes(out[:expected])


def _gdcm_frames(spec: PixelSpec) -> Decoded:
    """python-gdcm's JPEG codecs frame by frame, for what pydicom's plugins refuse:
    processes 6-12 (.4.53/.4.55) and 12-bit JPEG Extended streams libjpeg rejects."""
    try:
        import gdcm
    except ImportError as exc:
        raise NotApplicable("python-gdcm is not installed") from exc
    gdcm.Trace.WarningOff()  # it writes to stderr while probing 8- then 12-bit JPEG
    gdcm.Trace.ErrorOff()  # a failure comes back as no buffer, reported by us
    if spec.bits_allocated not in (8, 16):
        raise NotApplicable(f"{spec.bits_allocated} bits allocated")
    ts_type = gdcm.TransferSyntax.GetTSType(str(spec.ts))
    pi_type = gdcm.PhotometricInterpretation.GetPIType(spec.photometric)
    fmt = (spec.samples, spec.bits_allocated, spec.bits_stored, spec.bits_stored - 1)

    def frame(data: bytes, index: int) -> np.ndarray:
        fragment = gdcm.Fragment()
        fragment.SetByteStringValue(data)
        fragments = gdcm.SequenceOfFragments.New()
        fragments.AddFragment(fragment)
        element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        element.SetValue(fragments.__ref__())
        image = gdcm.Image()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((spec.cols, spec.rows, 1))
        image.SetDataElement(element)
        image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
        if spec.samples > 1:
            image.SetPlanarConfiguration(0)
        image.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
        image.SetPixelFormat(gdcm.PixelFormat(*fmt, spec.pixel_representation))
        buffer = image.GetBuffer()
        if buffer is None:
            raise ValueError(f"gdcm could not decode frame {index + 1}")
        raw = buffer.encode("utf-8", "surrogateescape")
        return np.frombuffer(raw, dtype=spec.dtype.newbyteorder("<"))

    photometric = "YBR_FULL" if spec.photometric == "YBR_FULL_422" else spec.photometric
    return Decoded(_frames_into(spec, frame), photometric, "gdcm-frames")


def _nvimgcodec(spec: PixelSpec) -> Decoded:
    """NVIDIA nvImageCodec (nvJPEG2000) on the GPU, frame by frame (services/decoder/gpu.py)."""
    if (why := gpu.unavailable()) is not None:
        raise NotApplicable(why)
    return Decoded(
        _frames_into(spec, lambda data, _: gpu.decode_frame(data)), spec.photometric, "nvimgcodec"
    )


def _j2k_repair(spec: PixelSpec) -> Decoded:
    """openjpeg after dropping marker segments between the last tile-part and EOC (only
    EOC may follow it; openjpeg refuses such streams). Not applicable to other streams."""
    frames = list(spec.iter_frames())
    repaired = [repair_j2k(frame) for frame in frames]
    if all(r is None for r in repaired):
        raise NotApplicable("no known codestream defect to repair")
    dropped = sum(len(f) - len(r) for f, r in zip(frames, repaired, strict=True) if r is not None)
    log.warning(
        "repairing JPEG 2000 codestream: dropped %d bytes after the last tile-part", dropped
    )
    fixed = [r if r is not None else f for f, r in zip(frames, repaired, strict=True)]
    buffer = encapsulate(fixed)
    decoder = get_decoder(spec.ts)
    if "pylibjpeg" not in decoder.available_plugins:
        raise NotApplicable("pylibjpeg-openjpeg is not installed")
    opts = {**spec.options(), "extended_offsets": None}
    arr, meta = decoder.as_array(buffer, decoding_plugin="pylibjpeg", raw=True, **opts)
    photometric = str(meta.get("photometric_interpretation") or spec.photometric)
    return Decoded(to_4d(np.asarray(arr), spec), photometric, "j2k-repair")


_SOC_SIZ = b"\xff\x4f\xff\x51"
_SOT, _EOC = b"\xff\x90", b"\xff\xd9"


def repair_j2k(codestream: bytes) -> bytes | None:
    """The codestream without marker segments between its last tile-part and EOC, or None
    when there is nothing this repair applies to (well formed, or not parseable by it)."""
    if not codestream.startswith(_SOC_SIZ):
        return None
    position, end = 2, len(codestream)
    while codestream[position : position + 2] != _SOT:  # main header
        if position + 4 > end or codestream[position] != 0xFF:
            return None
        position += 2 + int.from_bytes(codestream[position + 2 : position + 4], "big")
    while codestream[position : position + 2] == _SOT:  # tile-parts, by their Psot lengths
        psot = int.from_bytes(codestream[position + 6 : position + 10], "big")
        if psot == 0:  # the last tile-part runs to EOC: nothing to cut
            return None
        position += psot
        if position > end:
            return None
    tail = position
    if codestream[tail : tail + 2] == _EOC:
        return None
    while codestream[position : position + 2] != _EOC:
        if position + 4 > end or codestream[position] != 0xFF:
            return None
        position += 2 + int.from_bytes(codestream[position + 2 : position + 4], "big")
    return codestream[:tail] + _EOC


_CANDIDATES: dict[str, Candidate] = {
    "native": _plugin(""),
    "pylibjpeg": _plugin("pylibjpeg"),
    "gdcm": _plugin("gdcm"),
    "pillow": _plugin("pillow"),
    "pyjpegls": _plugin("pyjpegls"),
    "gdcm-frames": _gdcm_frames,
    "deflate": _deflate,
    "rle": _rle,
    "j2k-repair": _j2k_repair,
    "nvimgcodec": _nvimgcodec,
}


# --- codestream headers ----------------------------------------------------------------

_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE})
_JPEG_SOF |= {0xCF, 0xF7}  # 0xF7: JPEG-LS SOF55
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})


def check_codestream_headers(spec: PixelSpec) -> None:
    """Refuse frames whose codestream header describes another image than the DICOM header:
    codecs allocate from the codestream, so this is also a guard against memory bombs."""
    if spec.ts in _J2K:
        reader, kind = j2k_geometry, "JPEG 2000"
    elif spec.ts in _JPEG_DCT or spec.ts in _JPEG_LS or spec.ts in (JPEGLossless, JPEGLosslessSV1):
        reader, kind = jpeg_geometry, "JPEG"
    else:
        return
    for index, frame in enumerate(spec.iter_frames()):
        geometry = reader(frame)
        if geometry is None:
            continue  # not parseable here: the codecs will say what is wrong
        rows, cols, components = geometry
        if cols != spec.cols or (rows and rows != spec.rows) or components != spec.samples:
            raise InvalidInput(
                f"{kind} codestream is corrupt or belongs to another image: frame {index + 1} "
                f"declares {cols:,} columns x {rows:,} rows x {components} component(s), the "
                f"DICOM header {spec.cols:,} x {spec.rows:,} x {spec.samples}"
            )


@dataclass(frozen=True)
class JpegHeader:
    """The first SOF (or JPEG-LS SOF55) marker of a JPEG stream; rows 0: given by DNL."""

    precision: int
    rows: int
    cols: int
    components: int


def jpeg_geometry(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, cols, components) from the first SOF marker (rows 0: given by DNL)."""
    header = jpeg_header(frame)
    return None if header is None else (header.rows, header.cols, header.components)


def jpeg_header(frame: bytes) -> JpegHeader | None:
    """The first SOF marker segment, or None when the stream is not parseable up to it."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    position, end = 2, len(frame)
    while position + 4 <= end:
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            position += 2
            continue
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or position + 10 > end:
                return None
            rows = int.from_bytes(frame[position + 5 : position + 7], "big")
            cols = int.from_bytes(frame[position + 7 : position + 9], "big")
            return JpegHeader(frame[position + 4], rows, cols, frame[position + 9])
        if marker == 0xDA or length < 2:  # scan data before any SOF, or a broken length
            return None
        position += 2 + length
    return None


def j2k_geometry(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, cols, components) from the SIZ marker of a codestream (JP2 wrapped or not)."""
    start = frame.find(_SOC_SIZ, 0, 65536)
    if start < 0 or start + 42 > len(frame):
        return None
    siz = frame[start + 4 :]
    width = int.from_bytes(siz[4:8], "big") - int.from_bytes(siz[12:16], "big")
    height = int.from_bytes(siz[8:12], "big") - int.from_bytes(siz[16:20], "big")
    return height, width, int.from_bytes(siz[36:38], "big")


# --- helpers ---------------------------------------------------------------------------


_TS_NAMES = {DeflatedImageFrame: "Deflated Image Frame Compression"}
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def ts_label(ts: UID) -> str:
    """The UID and its name; a malformed value is described, never quoted (a corrupt
    element can run into the next ones, which may hold patient data)."""
    text = str(ts)
    if len(text) > 64 or not _UID.fullmatch(text):
        return f"(a malformed UID value of {len(text)} characters)"
    name = _TS_NAMES.get(ts, ts.name)
    return f"{ts} ({name})" if name != text else f"{ts} (unknown)"


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # Pillow names its BytesIO
_PYDICOM_WRAPPER = "Unable to decode as exceptions were raised by all available plugins:"


def _one_line(exc: BaseException) -> str:
    """The message on one line, without pydicom's "all plugins failed" wrapper around it."""
    text = exc.reason if isinstance(exc, PlatformError) else str(exc)
    text = _OBJECT_REPR.sub("the stream", " ".join(text.split()))
    if text.startswith(_PYDICOM_WRAPPER):
        text = text[len(_PYDICOM_WRAPPER) :].strip()
        name, _, rest = text.partition(": ")
        text = rest if name.isidentifier() and rest else text
    return text or type(exc).__name__


def _cap(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
