"""The decoder's worker pool: crashes, hangs and memory blow-ups cost one task, never the pool.

Failures are provoked deterministically with module-level functions run in the workers
(os.abort, a null-pointer read, sleep, a huge allocation, SIGKILL), plus a real native crash
(python-gdcm on a corpus file) and a real decode larger than the memory cap.
"""

from __future__ import annotations

import ctypes
import gzip
import os
import pickle
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid
from waiting import pause, wait_until

from services.common import errors
from services.common.errors import (
    DependencyUnavailable,
    InternalError,
    InvalidInput,
    PlatformError,
    Status,
    TooLarge,
    UnsupportedInput,
)
from services.common.exchange import PixelExchange
from services.common.images import DecodedImage, SharedImage
from services.common.settings import DecodeLimits, DecoderSettings
from services.decoder import server as decoder_server
from services.decoder.core import decode_instance
from services.decoder.pool import DecoderPool, describe_instance, sop_instance_uid

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
TIMEOUT = 2.0
MEMORY_CAP = 256 * 2**20
ABORT_MARKER = "ABORT-IN-THE-CODEC"


# --- functions run in the workers (module level, so they pickle by reference) -------------


def _decode_or_abort(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """The real decoder, except that a file carrying the marker crashes it like a codec would."""
    if ABORT_MARKER.encode() in data:
        os.abort()
    return decode_instance(data, limits)


def _segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _ignore_sigterm_and_spin() -> None:
    """Like a native loop that holds the GIL: SIGTERM cannot stop it, only SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def _allocate(size: int) -> int:
    return len(bytearray(size))


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


def _raise_key_error() -> None:
    raise KeyError("a decoder bug")


def _running(pool: DecoderPool) -> bool:
    """A task of ``pool`` has reached a worker (it is no longer only queued)."""
    return any(future.running() for future in list(pool._pending))


def _square(value: int) -> int:
    pause(0.2, "a task long enough to overlap with the crashing one")
    return value * value


class _FussyError(InvalidInput):
    """A domain error whose constructor pickle cannot call (the reason must survive anyway)."""

    def __init__(self, reason: str, detail: object) -> None:
        super().__init__(reason)
        self.detail = detail


def _raise_fussy() -> None:
    raise _FussyError("the codestream ends early", detail=threading.Lock())


def _gdcm_read(data: bytes) -> int:
    """python-gdcm's own reader: it aborts the process on some RLE files."""
    import gdcm

    with tempfile.NamedTemporaryFile(suffix=".dcm") as file:
        file.write(data)
        file.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(file.name)
        reader.Read()
        return int(reader.GetImage().GetBufferLength())


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[DecoderPool]:
    with DecoderPool(
        workers=2, timeout_seconds=TIMEOUT, memory_bytes=MEMORY_CAP, decode_fn=_decode_or_abort
    ) as running:
        running.start()
        yield running


def _ct(uid: str = "", comment: str = "", rows: int = 16) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid or generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImageComments = comment
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * rows, dtype="<u2") % 4096).tobytes()
    return ds


def _bytes(ds: Dataset, transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _error(call: Callable[[], object]) -> PlatformError:
    with pytest.raises(PlatformError) as caught:
        call()
    return caught.value


def _assert_serving(pool: DecoderPool) -> None:
    image = pool.decode(_bytes(_ct()), DecodeLimits())
    assert image.pixels.shape == (1, 16, 16, 1)


# --- decoding and domain errors -----------------------------------------------------------


def test_decode_in_a_worker_equals_decode_in_process(pool: DecoderPool) -> None:
    data = (CORPUS / "pydicom-testfiles" / "MR_small_RLE.dcm").read_bytes()

    image = pool.decode(data, DecodeLimits())

    reference = decode_instance(data, DecodeLimits())
    assert image.attributes == reference.attributes
    assert image.pixels.dtype == reference.pixels.dtype
    np.testing.assert_array_equal(image.pixels, reference.pixels)


def test_through_the_pixel_exchange_the_pixels_stay_in_shared_memory(
    pool: DecoderPool, tmp_path: Path
) -> None:
    exchange = PixelExchange(tmp_path)
    data = (CORPUS / "pydicom-testfiles" / "MR_small_RLE.dcm").read_bytes()

    image = pool.decode(data, DecodeLimits(), exchange=exchange)

    assert isinstance(image, SharedImage)
    assert [p.name for p in tmp_path.iterdir()] == [image.pixels.name]  # the input was taken
    reference = decode_instance(data, DecodeLimits())
    assert image.attributes == reference.attributes
    np.testing.assert_array_equal(exchange.take(image.pixels), reference.pixels)
    assert not list(tmp_path.iterdir())


def test_a_crash_through_the_exchange_leaves_no_file_behind(
    pool: DecoderPool, tmp_path: Path
) -> None:
    exchange = PixelExchange(tmp_path)
    data = _bytes(_ct(generate_uid(), ABORT_MARKER))
    err = _error(lambda: pool.decode(data, DecodeLimits(), exchange=exchange))
    assert type(err) is InvalidInput and "crashed" in err.reason
    assert not list(tmp_path.iterdir())
    _assert_serving(pool)


def test_a_full_exchange_falls_back_to_the_pipe(pool: DecoderPool, tmp_path: Path) -> None:
    missing = PixelExchange(tmp_path / "not-there")  # every write fails, like ENOSPC
    image = pool.decode(_bytes(_ct()), DecodeLimits(), exchange=missing)
    assert isinstance(image, DecodedImage) and image.pixels.shape == (1, 16, 16, 1)


def _unsupported() -> bytes:
    ds = _ct()
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return _bytes(ds, "1.2.840.10008.1.2.4.100")  # MPEG2: no plugin decodes it


DOMAIN_ERRORS: dict[str, tuple[Callable[[], bytes], DecodeLimits, type[PlatformError]]] = {
    "empty": (lambda: b"", DecodeLimits(), InvalidInput),
    "gzip": (lambda: gzip.compress(_bytes(_ct())), DecodeLimits(), InvalidInput),
    "not DICOM": (lambda: b"GIF89a" + bytes(300), DecodeLimits(), InvalidInput),
    "too many pixels": (lambda: _bytes(_ct()), DecodeLimits(max_pixels=100), TooLarge),
    "unsupported syntax": (_unsupported, DecodeLimits(), UnsupportedInput),
}


@pytest.mark.parametrize("case", DOMAIN_ERRORS)
def test_domain_errors_cross_the_process_boundary_intact(pool: DecoderPool, case: str) -> None:
    make, limits, expected = DOMAIN_ERRORS[case]
    data = make()
    with pytest.raises(PlatformError) as in_process:
        decode_instance(data, limits)

    err = _error(lambda: pool.decode(data, limits))

    assert type(err) is expected is type(in_process.value)
    assert err.reason == in_process.value.reason
    assert err.code == expected.code


def _platform_error_classes() -> list[type[PlatformError]]:
    found, todo = [], [PlatformError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", _platform_error_classes(), ids=lambda c: c.__name__)
def test_every_platform_error_pickles_with_its_reason(cls: type[PlatformError]) -> None:
    copy = pickle.loads(pickle.dumps(cls("the reason a person reads")))

    assert type(copy) is cls
    assert copy.reason == "the reason a person reads"
    assert copy.code == cls.code


def test_a_domain_error_that_does_not_pickle_keeps_its_status_and_reason(
    pool: DecoderPool,
) -> None:
    err = _error(lambda: pool.run(_raise_fussy))

    assert type(err) is InvalidInput
    assert err.reason == "the codestream ends early"


# --- crashes ------------------------------------------------------------------------------


def test_a_crash_fails_only_its_task_and_the_pool_keeps_serving(pool: DecoderPool) -> None:
    with ThreadPoolExecutor(max_workers=5) as threads:
        good = [threads.submit(pool.run, _square, n) for n in range(4)]
        crash = threads.submit(pool.run, os.abort)

        assert [f.result(timeout=30) for f in good] == [0, 1, 4, 9]
        err = crash.exception(timeout=30)

    assert isinstance(err, InvalidInput)
    assert "the decoder process crashed (signal 6) on this file" in err.reason
    assert err.code == Status.INVALID_ARGUMENT
    _assert_serving(pool)


def test_a_segfault_is_reported_with_its_signal(pool: DecoderPool) -> None:
    err = _error(lambda: pool.run(_segfault))

    assert type(err) is InvalidInput
    assert "crashed (signal 11)" in err.reason
    _assert_serving(pool)


def test_a_crash_names_the_sop_instance_uid(pool: DecoderPool) -> None:
    uid = generate_uid()
    err = _error(lambda: pool.decode(_bytes(_ct(uid, ABORT_MARKER)), DecodeLimits()))

    assert type(err) is InvalidInput
    assert err.reason == (
        f"could not decode instance {uid}: the decoder process crashed (signal 6) on this file"
    )
    assert "Traceback" not in err.reason
    _assert_serving(pool)


def test_a_real_native_crash_on_a_corpus_file_is_contained(pool: DecoderPool) -> None:
    pytest.importorskip("gdcm")
    data = (CORPUS / "pydicom-data" / "liver_rle.dcm").read_bytes()

    err = _error(lambda: pool.run(_gdcm_read, data, describe=lambda: describe_instance(data)))

    assert type(err) is InvalidInput
    uid = pydicom.dcmread(BytesIO(data)).SOPInstanceUID
    assert f"instance {uid}: the decoder process crashed (signal 6)" in err.reason
    _assert_serving(pool)


def test_an_unexpected_exception_is_internal_without_a_traceback(pool: DecoderPool) -> None:
    err = _error(lambda: pool.run(_raise_key_error))

    assert type(err) is InternalError
    assert err.code == Status.INTERNAL
    assert "KeyError" in err.reason
    assert "Traceback" not in err.reason and "\n" not in err.reason
    _assert_serving(pool)


# --- hangs --------------------------------------------------------------------------------


def test_a_hang_is_killed_after_the_timeout(pool: DecoderPool) -> None:
    start = time.monotonic()
    err = _error(lambda: pool.run(time.sleep, 60))
    elapsed = time.monotonic() - start

    assert type(err) is TooLarge
    assert err.code == Status.RESOURCE_EXHAUSTED
    assert f"decoding took longer than {TIMEOUT:g} s" in err.reason
    assert TIMEOUT <= elapsed < TIMEOUT + 2
    _assert_serving(pool)


def test_a_hang_that_ignores_sigterm_is_killed_too(pool: DecoderPool) -> None:
    start = time.monotonic()
    err = _error(lambda: pool.run(_ignore_sigterm_and_spin))

    assert type(err) is TooLarge
    assert time.monotonic() - start < TIMEOUT + 3 + 2  # pebble sends SIGKILL 3 s after SIGTERM
    _assert_serving(pool)


# --- memory -------------------------------------------------------------------------------


def test_an_allocation_over_the_memory_cap_is_resource_exhausted(pool: DecoderPool) -> None:
    err = _error(lambda: pool.run(_allocate, 2 * MEMORY_CAP))

    assert type(err) is TooLarge
    assert err.code == Status.RESOURCE_EXHAUSTED
    assert "memory" in err.reason
    assert pool.run(_allocate, MEMORY_CAP // 4) == MEMORY_CAP // 4  # under the cap: fine


def test_a_real_decode_over_the_memory_cap_is_resource_exhausted() -> None:
    """The 120-frame US clip decodes to 110 MB: more than a 64 MB cap allows."""
    data = (CORPUS / "pydicom-data" / "color3d_jpeg_baseline.dcm").read_bytes()
    with DecoderPool(workers=1, timeout_seconds=60, memory_bytes=64 * 2**20) as small:
        err = _error(lambda: small.decode(data, DecodeLimits()))

        assert type(err) is TooLarge
        assert err.code == Status.RESOURCE_EXHAUSTED
        assert "memory" in err.reason
        _assert_serving(small)


def test_a_killed_worker_is_resource_exhausted(pool: DecoderPool) -> None:
    err = _error(lambda: pool.run(_sigkill_self))

    assert type(err) is TooLarge
    assert "killed (signal 9)" in err.reason
    _assert_serving(pool)


# --- pool life cycle ----------------------------------------------------------------------


def test_workers_are_replaced_after_max_tasks() -> None:
    with DecoderPool(workers=1, timeout_seconds=10, max_tasks_per_child=2) as small:
        pids = [small.run(os.getpid) for _ in range(6)]

    assert len(set(pids)) == 3


def test_the_pool_recovers_when_its_idle_workers_die() -> None:
    """pebble breaks the whole pool when workers die with no task running (an OOM kill of an
    idle worker); the next task gets a new pool."""
    with DecoderPool(workers=1, timeout_seconds=10) as small:
        first = small.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not small._pool.active, 10, "pebble did not notice the dead worker")

        assert small.run(os.getpid) != first
        assert small.run(_square, 3) == 9


def test_an_abandoned_task_is_stopped() -> None:
    callbacks: list[Callable[[], object]] = []
    with DecoderPool(workers=1, timeout_seconds=30) as small, ThreadPoolExecutor(1) as thread:
        start = time.monotonic()
        waiting = thread.submit(small.run, time.sleep, 30, on_abandon=callbacks.append)
        wait_until(lambda: callbacks and _running(small), 10, "the task never started")
        callbacks[0]()  # what gRPC does when the caller cancels or its deadline passes

        assert isinstance(waiting.exception(timeout=10), DependencyUnavailable)
        assert time.monotonic() - start < 10
        assert small.run(_square, 4) == 16


def test_close_stops_running_tasks_after_the_grace_and_refuses_new_ones() -> None:
    small = DecoderPool(workers=1, timeout_seconds=30)
    small.start()
    with ThreadPoolExecutor(1) as thread:
        waiting = thread.submit(small.run, time.sleep, 30)
        wait_until(lambda: _running(small), 10, "the task never started")
        start = time.monotonic()
        small.close(grace=0.5)

        assert isinstance(waiting.exception(timeout=10), DependencyUnavailable)
    assert time.monotonic() - start < 5
    assert type(_error(lambda: small.run(os.getpid))) is DependencyUnavailable


def test_stopping_the_service_stops_its_pool() -> None:
    running = decoder_server.start(DecoderSettings(port=0, metrics_port=0, decode_workers=1))
    assert running.pool is not None
    worker = running.pool.run(os.getpid)

    running.stop(0)

    assert type(_error(lambda: running.pool.run(os.getpid))) is DependencyUnavailable
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_settings_configure_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "IMAGING_DECODE_WORKERS": "3",
        "IMAGING_DECODE_TIMEOUT_SECONDS": "12.5",
        "IMAGING_DECODE_MEMORY_BYTES": str(2**30),
        "IMAGING_DECODE_MAX_TASKS_PER_CHILD": "50",
    }.items():
        monkeypatch.setenv(name, value)

    configured = DecoderPool.from_settings(DecoderSettings())
    try:
        assert configured.workers == 3
        assert configured.timeout_seconds == 12.5
        assert configured.memory_bytes == 2**30
        assert configured.max_tasks_per_child == 50
    finally:
        configured.close()


def test_limits_come_from_the_settings_of_the_same_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGING_MAX_ENCODED_BYTES", "1000")
    monkeypatch.setenv("IMAGING_MAX_PIXELS", "2000")
    monkeypatch.setenv("IMAGING_MAX_COMPRESSION_RATIO", "50")

    limits = DecoderSettings().limits()

    expected = {"max_encoded_bytes": 1000, "max_pixels": 2000, "max_compression_ratio": 50.0}
    assert limits == DecodeLimits().model_copy(update=expected)  # the rest: defaults
    assert type(limits) is DecodeLimits  # not the whole settings object


# --- naming the instance in reasons -------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda ds: _bytes(ds), id="explicit VR little endian"),
        pytest.param(lambda ds: _bytes(ds, ImplicitVRLittleEndian), id="implicit VR"),
        pytest.param(lambda ds: _bytes(ds, ExplicitVRBigEndian), id="big endian"),
        pytest.param(lambda ds: _without_meta(ds), id="no preamble or file meta"),
    ],
)
def test_the_sop_instance_uid_is_found_without_parsing(encode: Callable[[Dataset], bytes]) -> None:
    uid = generate_uid()

    assert sop_instance_uid(encode(_ct(uid))) == uid
    assert describe_instance(encode(_ct(uid))) == f"instance {uid}"


def _without_meta(ds: Dataset) -> bytes:
    buffer = BytesIO()
    del ds.file_meta
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [b"", b"GIF89a" + bytes(100), b"\x08\x00\x18\x00UI\x04\x00ab"])
def test_without_a_uid_the_reason_says_the_instance(data: bytes) -> None:
    assert sop_instance_uid(data) is None
    assert describe_instance(data) == "the instance"


def test_worker_functions_are_importable_by_reference() -> None:
    """Guards the test set-up itself: the workers unpickle these by module and name."""
    functions: list[Any] = [_decode_or_abort, _segfault, _allocate, _gdcm_read]
    assert all(pickle.loads(pickle.dumps(f)) is f for f in functions)
