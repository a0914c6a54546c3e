"""Every pixel file of the real corpus through the decoder service over gRPC.

Each file either decodes to the pixels pydicom's own plugins give (and, for a lossless
encoding, to the pixels of its uncompressed twin in the corpus), or is refused with
INVALID_ARGUMENT/RESOURCE_EXHAUSTED and one readable line, never a traceback; files pydicom
decodes must decode. The service runs in-process with its worker pool; the references are
computed in a worker process of their own (a codec crash there fails one file, not the run)
while the service decodes.
"""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common.convert import image_from_proto
from services.common.errors import PlatformError
from services.common.images import DecodedImage
from services.common.settings import DecodeLimits, DecoderSettings
from services.decoder import server as decoder_server
from services.decoder.core import decode_instance
from services.decoder.pool import DecoderPool

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
if not (CORPUS / "MANIFEST.csv").is_file():  # fail loudly rather than collect nothing
    raise FileNotFoundError(f"DICOM corpus not found at {CORPUS}")
MESSAGE_LIMIT = 256 * 2**20  # the 120-frame US clip decodes to 110 MB
GOOD_FILE = "pydicom-testfiles/CT_small.dcm"
# python-gdcm aborts the process on these (RLE with 1 bit allocated).
CRASH_FILES = ("pydicom-data/liver_rle.dcm", "pydicom-data/liver_nonbyte_aligned_rle.dcm")
REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
NATIVE = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}
LOSSLESS = NATIVE | {
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
}
# How the corpus names re-encodings of one image; a candidate counts as a twin only if it is
# uncompressed, has the same geometry and this file's encoding is lossless (see _twins).
TWIN_RULES = [
    (r"dcm_qa_ts/[2-9]\.dcm", "dcm_qa_ts/1.dcm"),
    (r"cornerstone/CTImage\.dcm_.+\.dcm", "cornerstone/CTImage.dcm"),
    (r"(pydicom-data/\w+)_J2KR\.dcm", r"\1_UNCR.dcm"),  # _UNCI: the lossy one, decompressed
    (r"(pydicom-data/OBXXXX1A)_(expb|rle)(_2frame)?\.dcm", r"\1\3.dcm"),
    (r"(pydicom-data/emri_small)_\w+\.dcm", r"\1.dcm"),
    (r"pydicom-data/SC_rgb_expb(\w*)\.dcm", r"pydicom-data/SC_rgb\1.dcm"),
    (r"pydicom-testfiles/SC_rgb_rle(\w*)\.dcm", r"pydicom-data/SC_rgb\1.dcm"),
    (r"(pydicom-data/liver(?:_nonbyte_aligned)?)_(expb|j2k|rle)\.dcm", r"\1.dcm"),
    (r"pydicom-testfiles/liver_expb_1frame\.dcm", "pydicom-testfiles/liver_1frame.dcm"),
    (r"(pydicom-data/gdcm-US-ALOKA-16)_big\.dcm", r"\1.dcm"),
    (r"(pydicom-testfiles/MR_small)_\w+\.dcm", r"\1.dcm"),
    (r"(pydicom-testfiles/rtdose)_(expb|rle)(_1frame)?\.dcm", r"\1\3.dcm"),
    (r"(pydicom-testfiles/SC_rgb_small_odd)_big_endian\.dcm", r"\1.dcm"),
]


def _manifest() -> dict[str, dict[str, str]]:
    with (CORPUS / "MANIFEST.csv").open(newline="") as file:
        return {row["path"]: row for row in csv.DictReader(file) if row["has_pixels"] == "1"}


ROWS = _manifest()


def _twins() -> dict[str, str]:
    geometry = ("rows", "cols", "frames", "spp", "bits_allocated")
    found = {}
    for path, row in ROWS.items():
        for pattern, replacement in TWIN_RULES:
            if not re.fullmatch(pattern, path):
                continue
            twin = ROWS.get(re.sub(pattern, replacement, path))
            if (
                twin is not None
                and twin["path"] != path
                and twin["transfer_syntax"] in NATIVE
                and row["transfer_syntax"] in LOSSLESS
                and all(twin[k] == row[k] for k in geometry)
            ):
                found[path] = twin["path"]
            break
    return found


TWINS = _twins()


# --- the reference: pydicom's default plugins, in a worker process ------------------------


def _pydicom_pixels(path: str, force: bool) -> np.ndarray | None:
    """Runs in a worker: pydicom.dcmread(...).pixel_array (YBR as RGB), PALETTE COLOR through
    its palette as the decoder returns it; None if pydicom cannot decode it.

    No reference for big-endian PALETTE COLOR: pydicom 3.0.2 reads those 16-bit OW palettes
    byte-swapped compared with GDCM and with their little-endian twins (which are checked).
    """
    try:
        ds = pydicom.dcmread(path, force=force)
        pixels = ds.pixel_array
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            if not ds.original_encoding[1]:
                return None
            pixels = apply_color_lut(pixels, ds)
        return np.asarray(pixels)
    except Exception:
        return None


class References:
    def __init__(self, pool: DecoderPool, threads: ThreadPoolExecutor) -> None:
        self._pool, self._threads = pool, threads

    def submit(self, relative: str) -> Future[np.ndarray | None]:
        return self._threads.submit(self.get, relative)

    @cache  # noqa: B019 (one instance per module; the uncompressed twins repeat)
    def get(self, relative: str) -> np.ndarray | None:
        force = ROWS[relative]["read"] != "ok"
        try:
            return self._pool.run(_pydicom_pixels, str(CORPUS / relative), force)
        except PlatformError:  # pydicom's plugins crashed or hung on it
            return None


@pytest.fixture(scope="module")
def references() -> Iterator[References]:
    with (
        DecoderPool(workers=1, timeout_seconds=300) as pool,
        ThreadPoolExecutor(max_workers=2) as threads,
    ):
        yield References(pool, threads)


@pytest.fixture(scope="module")
def decoder() -> Iterator[decoder_pb2_grpc.DicomDecoderStub]:
    running = decoder_server.start(_settings())
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}", options=options) as channel:
        yield decoder_pb2_grpc.DicomDecoderStub(channel)
    running.stop(0)


def _settings() -> DecoderSettings:
    return DecoderSettings(
        port=0,
        metrics_port=0,
        max_message_bytes=MESSAGE_LIMIT,
        decode_workers=2,
        decode_timeout_seconds=120,  # the US clip takes ~15 s on a slow 2-CPU machine
    )


def _decode(stub: decoder_pb2_grpc.DicomDecoderStub, relative: str) -> DecodedImage:
    request = decoder_pb2.DecodeRequest(dicom=(CORPUS / relative).read_bytes())
    return image_from_proto(stub.Decode(request, timeout=300).image)


def _assert_readable_refusal(err: grpc.RpcError) -> None:
    details = err.details() or ""
    assert err.code() in REFUSED, f"{err.code()}: {details}"
    assert details.strip(), "no reason given"
    assert "Traceback" not in details and "\n" not in details, details
    assert len(details) < 500, details


# --- the corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(ROWS))
def test_every_pixel_file_decodes_like_pydicom_or_gets_a_reason(
    relative: str, decoder: decoder_pb2_grpc.DicomDecoderStub, references: References
) -> None:
    row = ROWS[relative]
    expected = references.submit(relative)  # computed while the service decodes
    try:
        image = _decode(decoder, relative)
    except grpc.RpcError as err:
        _assert_readable_refusal(err)
        assert expected.result() is None, f"pydicom decodes it, the service refused: {err}"
        return

    pixels = image.pixels
    assert pixels.ndim == 4
    assert pixels.shape[1:3] == (int(row["rows"]), int(row["cols"]))
    reference = expected.result()
    if reference is not None:
        _assert_same_pixels(pixels, reference, lossy_plugins_differ=row["plugins_disagree"] == "1")
    if relative in TWINS:
        twin = references.get(TWINS[relative])
        assert twin is not None
        _assert_same_pixels(pixels, twin, lossy_plugins_differ=False)


def _assert_same_pixels(
    pixels: np.ndarray, reference: np.ndarray, lossy_plugins_differ: bool
) -> None:
    assert pixels.size == reference.size
    assert (pixels.dtype.kind, pixels.dtype.itemsize) == (
        reference.dtype.kind,
        reference.dtype.itemsize,
    )
    reference = reference.reshape(pixels.shape)
    if not lossy_plugins_differ:
        np.testing.assert_array_equal(pixels, reference)
        return
    # Lossy JPEG: decoders round the IDCT and colour conversion differently.
    difference = np.abs(pixels.astype(np.float64) - reference.astype(np.float64))
    span = float(reference.max()) - float(reference.min()) + 1
    assert difference.mean() <= 0.01 * span


def test_the_corpus_is_all_there() -> None:
    assert len(ROWS) == 279
    assert len(TWINS) >= 55


# --- crashing files -----------------------------------------------------------------------


def test_files_that_crash_a_codec_leave_the_service_serving(
    decoder: decoder_pb2_grpc.DicomDecoderStub,
) -> None:
    """Decoded or refused (INVALID_ARGUMENT, also when a codec crashed): the next file decodes."""
    for relative in CRASH_FILES:
        try:
            assert _decode(decoder, relative).pixels.size > 0
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            _assert_readable_refusal(err)

        good = _decode(decoder, GOOD_FILE)
        assert good.pixels.shape == (1, 128, 128, 1)


def _decode_via_gdcm_first(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """Runs in a worker: python-gdcm reads the file before the decoder does, as a gdcm
    fallback would; on CRASH_FILES it aborts the process."""
    import gdcm

    with tempfile.NamedTemporaryFile(suffix=".dcm") as file:
        file.write(data)
        file.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(file.name)
        reader.Read()
    return decode_instance(data, limits)


def test_a_native_codec_crash_fails_that_request_only() -> None:
    pytest.importorskip("gdcm")
    settings = _settings()
    pool = DecoderPool(workers=2, timeout_seconds=60, decode_fn=_decode_via_gdcm_first)
    running = decoder_server.start(settings, pool)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = decoder_pb2_grpc.DicomDecoderStub(channel)
            with ThreadPoolExecutor(max_workers=4) as threads:
                crashes = [threads.submit(_decode, stub, path) for path in CRASH_FILES]
                goods = [threads.submit(_decode, stub, GOOD_FILE) for _ in range(4)]

                for relative, crash in zip(CRASH_FILES, crashes, strict=True):
                    err = crash.exception(timeout=120)
                    assert isinstance(err, grpc.RpcError)
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                    uid = pydicom.dcmread(CORPUS / relative).SOPInstanceUID
                    assert err.details() == (
                        f"could not decode instance {uid}: the decoder process crashed "
                        "(signal 6) on this file"
                    )
                assert all(g.result(timeout=120).pixels.shape == (1, 128, 128, 1) for g in goods)
            assert _decode(stub, GOOD_FILE).pixels.size == 128 * 128
    finally:
        running.stop(0)
