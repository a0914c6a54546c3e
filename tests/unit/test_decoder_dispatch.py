"""Where a file is decoded (in process or the pool) and where its pixels go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.errors import Misconfiguration
from services.common.exchange import PixelExchange
from services.common.images import DecodedImage, SharedImage, SharedPixels
from services.common.settings import DecodeLimits
from services.decoder.core import decode_instance
from services.decoder.dispatch import Decoding

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
NATIVE = CORPUS / "pydicom-testfiles" / "MR_small_bigendian.dcm"
RLE = CORPUS / "pydicom-testfiles" / "MR_small_RLE.dcm"


class RecordingPool:
    """Stands in for the worker pool (tests/unit/test_decoder_pool.py covers the real one)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def decode(self, data: bytes, limits: DecodeLimits, **_: Any) -> DecodedImage:
        self.calls.append(data)
        return decode_instance(data, limits)


def _decoding(exchange: PixelExchange | None = None) -> tuple[Decoding, RecordingPool]:
    pool = RecordingPool()
    return Decoding(pool, DecodeLimits(), exchange), pool  # type: ignore[arg-type]


def test_native_syntaxes_decode_in_process_and_codecs_in_the_pool() -> None:
    decoding, pool = _decoding()
    native = decoding.decode(NATIVE.read_bytes(), shared_output=False)
    assert isinstance(native, DecodedImage) and pool.calls == []
    rle = decoding.decode(RLE.read_bytes(), shared_output=False)
    assert isinstance(rle, DecodedImage) and pool.calls == [RLE.read_bytes()]


def test_pixels_stay_in_the_exchange_only_for_a_caller_that_asks(tmp_path: Path) -> None:
    exchange = PixelExchange(tmp_path)
    decoding, _ = _decoding(exchange)
    data = NATIVE.read_bytes()
    shared = decoding.decode(data, shared_output=True)
    assert isinstance(shared, SharedImage)
    np.testing.assert_array_equal(exchange.take(shared.pixels), decode_instance(data).pixels)
    inline = decoding.decode(data, shared_output=False)
    assert isinstance(inline, DecodedImage) and not list(tmp_path.iterdir())


def test_a_shared_file_needs_an_exchange() -> None:
    decoding, _ = _decoding()
    with pytest.raises(Misconfiguration, match="IMAGING_PIXEL_EXCHANGE_DIR"):
        decoding.receive(SharedPixels("px-" + "0" * 32, np.dtype(np.uint8), (4,)))


def test_a_multi_valued_transfer_syntax_is_refused_as_bad_input_not_a_crash() -> None:
    """Found by the mixed bad/good fault test: a flipped byte made the file meta's Transfer
    Syntax UID a multi-value, and the in-process check raised TypeError (INTERNAL)."""
    import contextlib
    from io import BytesIO

    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    from services.common.errors import PlatformError
    from services.decoder.core import decode_instance, decodes_in_process

    ds = pydicom.Dataset()
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((4, 4), np.uint8).tobytes()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    good = b"1.2.840.10008.1.2.1\x00"
    assert good in data
    corrupt = data.replace(good, b"1.2.840.10008.1.2\\1\x00", 1)  # same length: now two values
    assert not decodes_in_process(corrupt)
    with contextlib.suppress(PlatformError):  # refused with a reason, or read: never a crash
        decode_instance(corrupt)
