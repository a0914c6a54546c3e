"""Decode in worker processes, so that a bad file costs one request and one worker, no more.

Native codecs (OpenJPEG, libjpeg, GDCM, ...) can abort, segfault, loop or allocate without
bound on a broken or crafted file. Every decode therefore runs in a worker of a pebble
``ProcessPool``: the worker that fails is stopped and replaced, other requests go on, and the
caller gets a :class:`~services.common.errors.PlatformError`:

- a PlatformError raised in the worker (InvalidInput, TooLarge, ...): the same error, pickled
  across with its reason;
- the worker crashed (SIGABRT, SIGSEGV, ...) or exited: InvalidInput, "could not decode
  instance <SOP Instance UID>: the decoder process crashed (signal 6) on this file";
- the worker was killed (SIGKILL, what the kernel's OOM killer sends) or hit its memory cap
  (RLIMIT_AS, so allocations fail with MemoryError): TooLarge, RESOURCE_EXHAUSTED;
- the decode ran past the timeout: the worker is killed and the caller gets TooLarge,
  RESOURCE_EXHAUSTED. The time limit is a configured resource cap like the size limits, and a
  valid but huge file can reach it, so it is not INVALID_ARGUMENT; nor is it
  DEADLINE_EXCEEDED, which is the caller's own deadline and invites a retry that would take as
  long again;
- any other exception is a decoder bug: InternalError (INTERNAL), traceback in the log.

Workers are forked from a fork server that imported the decoder and its codecs once, so a
replacement is ready in milliseconds (an idle worker adds ~5 MB of private memory) and never
inherits the gRPC server's threads. Request and pixels travel pickled through pebble's pipe,
about 4 ms per MB on a small VM: 30 ms for a 7 MB CR, 0.45 s for the 110 MB 120-frame US clip
(load_tests/bench_decode.py --pool). Shared memory would cut the pixels' part to about a third
but needs a /dev/shm larger than the largest image (containers get 64 MB; past it the worker
dies of SIGBUS) and cleanup of segments orphaned by timeouts and cancellations: not used.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import resource
import signal
import struct
import threading
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar, cast

from pebble import ProcessExpired, ProcessFuture, ProcessPool
from prometheus_client import Counter

from services.common import errors, logs
from services.common.errors import (
    DependencyUnavailable,
    InternalError,
    InvalidInput,
    PlatformError,
    TooLarge,
)
from services.common.exchange import PixelExchange
from services.common.images import Decoded, DecodedImage, SharedImage, SharedPixels
from services.common.settings import DecodeLimits, DecoderSettings
from services.decoder.core import decode_instance
from services.decoder.header import quiet_pydicom

T = TypeVar("T")
DecodeFn = Callable[[bytes, DecodeLimits], DecodedImage]
# Registers a callback to run when the caller gives up (grpc.ServicerContext.add_callback).
OnAbandon = Callable[[Callable[[], object]], object]

_log = logging.getLogger(__name__)

WORKERS_LOST = Counter(
    "imaging_decoder_workers_lost_total",
    "Decoder worker processes stopped and replaced, by cause (crash, killed, timeout).",
    ["cause"],
)
# Imported once in the fork server, so that a new worker has them without paying for it.
# Absent modules are skipped (multiprocessing ignores ImportError in the preload list).
_PRELOAD = ["services.decoder.pool", "pylibjpeg", "openjpeg", "libjpeg", "rle", "gdcm", "jpeg_ls"]
_UID = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_UID_TAGS = (
    (b"\x08\x00\x18\x00", "<"),  # (0008,0018) SOP Instance UID, little endian
    (b"\x00\x08\x00\x18", ">"),  # the same in an explicit VR big endian dataset
    (b"\x02\x00\x03\x00", "<"),  # (0002,0003) Media Storage SOP Instance UID, file meta
)
_SCAN_BYTES = 1 << 20  # the UID sits in the header, long before the pixels
_MAX_REASON = 300


class DecoderPool:
    """A pebble ProcessPool that turns every way a worker can fail into a PlatformError.

    ``run`` takes any picklable callable (tests provoke crashes, hangs and allocations with
    module-level functions); ``decode`` runs ``decode_fn`` (the decoder) on one instance.
    """

    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        memory_bytes: int = 0,
        max_tasks_per_child: int = 0,
        decode_fn: DecodeFn = decode_instance,
    ) -> None:
        self.workers = workers
        self.timeout_seconds = timeout_seconds
        self.memory_bytes = memory_bytes
        self.max_tasks_per_child = max_tasks_per_child
        self._decode_fn = decode_fn
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[ProcessFuture[Any]] = set()
        self._pool = self._new_pool()

    @classmethod
    def from_settings(cls, settings: DecoderSettings) -> DecoderPool:
        return cls(
            workers=settings.decode_workers,
            timeout_seconds=settings.decode_timeout_seconds,
            memory_bytes=settings.decode_memory_bytes,
            max_tasks_per_child=settings.decode_max_tasks_per_child,
        )

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers and run one task, so a bad configuration fails at start-up."""
        self.run(os.getpid, describe=lambda: "the start-up check")

    def decode(
        self,
        data: bytes,
        limits: DecodeLimits,
        *,
        on_abandon: OnAbandon | None = None,
        exchange: PixelExchange | None = None,
    ) -> Decoded:
        """Decode one instance in a worker; ``on_abandon`` (e.g. ``context.add_callback``)
        lets a caller that gives up stop the decode.

        With a pixel ``exchange`` the file goes to the worker, and the pixels come back, through
        shared memory instead of pickles down a pipe (~35 ms for a 7 MB radiograph): the result
        is then a SharedImage, unless the exchange was full."""
        describe = lambda: describe_instance(data)  # noqa: E731
        sent = exchange.put_bytes(data) if exchange is not None else None
        if exchange is None or sent is None:
            return self.run(self._decode_fn, data, limits, describe=describe, on_abandon=on_abandon)
        try:
            return self.run(
                _decode_exchanged,
                self._decode_fn,
                sent,
                exchange,
                limits,
                describe=describe,
                on_abandon=on_abandon,
            )
        finally:
            exchange.discard(sent)  # normally the worker took it already

    def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        describe: Callable[[], str] = lambda: "the input",
        on_abandon: OnAbandon | None = None,
    ) -> T:
        """``fn(*args)`` in a worker; its result, or a PlatformError whatever went wrong.

        ``describe`` names the input in error reasons; it is only called on failure.
        """
        future = self._submit(fn, args)
        if on_abandon is not None:
            on_abandon(future.cancel)
        try:
            return future.result()
        except PlatformError:
            raise  # the worker's own domain error, intact
        except ProcessExpired as exc:
            raise _expired(exc, describe()) from None
        except TimeoutError:
            WORKERS_LOST.labels("timeout").inc()
            raise TooLarge(
                f"could not decode {describe()}: decoding took longer than "
                f"{self.timeout_seconds:g} s, the decoder's limit"
            ) from None
        except (CancelledError, BrokenProcessPool) as exc:
            if isinstance(exc, BrokenProcessPool):
                _log.error("decoder worker pool failed: %s", exc)
            raise DependencyUnavailable(
                f"decoding {describe()} was interrupted: the decoder is restarting its workers "
                "or shutting down; retry"
            ) from None
        except _WorkerBug as exc:
            _log.error("decoder bug on %s: %s\n%s", describe(), exc.kind, exc.details)
            raise InternalError(
                f"the decoder failed unexpectedly on {describe()} ({exc.kind}); the "
                "operator's log has the details"
            ) from None
        except Exception:  # from pebble itself, e.g. a result that would not pickle
            _log.exception("decoder worker pool error on %s", describe())
            raise InternalError(
                f"the decoder failed unexpectedly on {describe()}; the operator's log has the "
                "details"
            ) from None
        finally:
            with self._lock:
                self._pending.discard(future)

    def close(self, grace: float = 0.0) -> None:
        """Let running tasks finish for up to ``grace`` seconds, then stop every worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool = self._pool
        pool.close()  # type: ignore[no-untyped-call]
        try:
            pool.join(timeout=grace)
        except TimeoutError:
            pool.stop()  # type: ignore[no-untyped-call]
            pool.join()
        with self._lock:
            leftover = list(self._pending)
        for future in leftover:  # their callers get DependencyUnavailable, not a hang
            future.cancel()  # type: ignore[no-untyped-call]

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> ProcessFuture[T]:
        with self._lock:
            if self._closed:
                raise DependencyUnavailable("the decoder is shutting down; retry")
            if not self._pool.active:  # pebble gives up when workers die while idle
                self._replace_pool()
            future: ProcessFuture[T] = self._pool.schedule(
                _guarded, (fn, logs.request_id.get(), *args), timeout=self.timeout_seconds
            )
            self._pending.add(future)
        return future

    def _new_pool(self) -> ProcessPool:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)  # no effect once the fork server runs
        return ProcessPool(
            max_workers=self.workers,
            max_tasks=self.max_tasks_per_child,
            initializer=_init_worker,
            initargs=(self.memory_bytes, _log_level()),
            context=context,
        )

    def _replace_pool(self) -> None:
        """Called with the lock held: a broken pool is swapped for a new one."""
        _log.error("decoder worker pool is broken; starting a new one")
        broken, self._pool = self._pool, self._new_pool()
        for future in list(self._pending):  # tasks the broken pool would never finish
            future.cancel()  # type: ignore[no-untyped-call]
        threading.Thread(target=_dispose, args=(broken,), daemon=True).start()


def describe_instance(data: bytes) -> str:
    """``instance <SOP Instance UID>``, or ``the instance`` when the bytes do not say."""
    uid = sop_instance_uid(data)
    return f"instance {uid}" if uid else "the instance"


def sop_instance_uid(data: bytes) -> str | None:
    """The SOP Instance UID, found by scanning the bytes rather than parsing them.

    Used for files the decoder failed on, where parsing is what went wrong.
    """
    head = data[:_SCAN_BYTES]
    for tag, order in _UID_TAGS:
        start = head.find(tag)
        for _ in range(64):
            if start < 0:
                break
            value = _uid_value(head, start + 4, order)
            if value is not None:
                return value
            start = head.find(tag, start + 1)
    return None


def _uid_value(data: bytes, offset: int, order: str) -> str | None:
    """The value of the element whose tag ends at ``offset``, if it is a plausible UID."""
    header = data[offset : offset + 4]
    if len(header) < 4:
        return None
    if header[:2] == b"UI":  # explicit VR
        length, start = struct.unpack(f"{order}H", header[2:4])[0], offset + 4
    elif order == "<":  # implicit VR little endian
        length, start = struct.unpack("<I", header)[0], offset + 4
    else:
        return None
    value = data[start : start + length].rstrip(b"\x00 ") if length <= 64 else b""
    return value.decode("ascii") if _UID.fullmatch(value) else None


def _expired(exc: ProcessExpired, subject: str) -> PlatformError:
    code = exc.exitcode
    if code == -signal.SIGKILL:
        WORKERS_LOST.labels("killed").inc()
        return TooLarge(
            f"could not decode {subject}: the decoder process was killed (signal 9) on this "
            "file, most likely for using too much memory"
        )
    WORKERS_LOST.labels("crash").inc()
    if code is not None and code < 0:
        return InvalidInput(
            f"could not decode {subject}: the decoder process crashed (signal {-code}) on this file"
        )
    return InvalidInput(
        f"could not decode {subject}: the decoder process exited (code {code}) on this file"
    )


class _WorkerBug(Exception):
    """An exception other than a PlatformError, flattened in the worker so it always unpickles
    (an exception that does not unpickle would break the whole pebble pool)."""

    def __init__(self, kind: str, details: str) -> None:
        super().__init__(kind, details)
        self.kind = kind
        self.details = details


def _guarded(fn: Callable[..., T], request_id: str, *args: Any) -> T:
    """Runs in the worker: the result, or an exception that crosses the pipe intact."""
    logs.request_id.set(request_id)  # the worker's log lines name the request
    try:
        return fn(*args)
    except PlatformError as err:
        raise _portable(err) from None
    except MemoryError:
        raise TooLarge(
            "not enough memory to decode this file: it needs more than the decoder's "
            "per-process memory cap"
        ) from None
    except BaseException as err:  # SystemExit and KeyboardInterrupt too: the worker goes on
        raise _WorkerBug(type(err).__qualname__, traceback.format_exc()) from None


def _portable(err: PlatformError) -> PlatformError:
    """``err`` if it survives pickling with its reason, else its nearest class of errors.py.

    The classes in services/common/errors.py take just the reason and always do; a subclass
    elsewhere with another constructor or unpicklable attributes might not.
    """
    reason = str(getattr(err, "reason", err))[:_MAX_REASON]
    try:
        copy = pickle.loads(pickle.dumps(err))
        if type(copy) is type(err) and getattr(copy, "reason", None) == err.reason:
            return err
    except Exception:
        pass
    for cls in type(err).__mro__:
        if cls.__module__ == errors.__name__:
            return cast(PlatformError, cls(reason))
    return InternalError(reason)  # pragma: no cover - every PlatformError has one


def _log_level() -> str:
    """This process's log level by name, for the workers."""
    name = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return name if name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else "WARNING"


def _decode_exchanged(
    decode_fn: DecodeFn, sent: SharedPixels, exchange: PixelExchange, limits: DecodeLimits
) -> Decoded:
    """In a worker: the file from the exchange, the pixels back into it."""
    image = decode_fn(exchange.take_bytes(sent), limits)
    handle = exchange.put(image.pixels)
    return image if handle is None else SharedImage(handle, image.attributes)


def _init_worker(memory_bytes: int, log_level: str) -> None:
    """Runs once in each new worker: the service's logging; no core dumps; a memory cap."""
    logs.configure(log_level)
    warnings.simplefilter("ignore")  # pydicom warns with tag values, which may identify a patient
    quiet_pydicom()  # nor may it log them: values are checked by services/decoder/header.py
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if memory_bytes > 0:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = _mapped_bytes() + memory_bytes
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _mapped_bytes() -> int:
    """This process's address space now (the baseline the memory cap is added to)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        return 0


def _dispose(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]
    pool.join()
