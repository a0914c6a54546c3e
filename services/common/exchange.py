"""Decoded pixels handed from the decoder to the preprocessor through shared memory.

Without it a radiograph crosses gRPC three times after the upload (DICOM to the decoder,
pixels back to the gateway, pixels on to the preprocessor). With a directory on a memory-backed
filesystem that both services mount (``/dev/shm`` locally; a ``medium: Memory`` emptyDir shared
by the containers of one pod in Kubernetes) the decoder writes the pixels there and returns a
handle with the attributes; the gateway routes on the attributes and forwards the handle; the
preprocessor reads the pixels and deletes the file. Only the DICOM upload to the decoder stays
full-size on the wire (Triton's system shared-memory protocol follows the same idea).

Handles are opaque random names, checked against a strict pattern before any path is built, so
a caller cannot make the preprocessor read any other file. Files no one consumed (a study
refused after decoding) are swept after ``ttl_seconds``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np

from services.common.errors import InvalidInput, Misconfiguration
from services.common.images import SharedPixels
from services.common.settings import PIXEL_EXCHANGE_TTL_SECONDS, ServiceSettings

log = logging.getLogger(__name__)

_NAME = re.compile(r"px-[0-9a-f]{32}")


class PixelExchange:
    """One exchange directory; the decoder puts, the preprocessor takes."""

    def __init__(self, directory: Path, ttl_seconds: float = PIXEL_EXCHANGE_TTL_SECONDS) -> None:
        self.directory = directory
        self.ttl_seconds = ttl_seconds

    @classmethod
    def configured(cls, settings: ServiceSettings) -> PixelExchange | None:
        """The exchange a service's settings name; None: pixels travel inline."""
        if settings.pixel_exchange_dir is None:
            return None
        return cls(settings.pixel_exchange_dir, settings.pixel_exchange_ttl_seconds)

    def put(self, pixels: np.ndarray) -> SharedPixels | None:
        """Write ``pixels``; None when the exchange is full or unusable (send them inline)."""
        array = np.ascontiguousarray(pixels)
        name = self._write(array.data.cast("B"))
        return None if name is None else SharedPixels(name, array.dtype, array.shape)

    def put_bytes(self, data: bytes) -> SharedPixels | None:
        """Write raw bytes (a DICOM file on its way to a decoder worker)."""
        name = self._write(memoryview(data))
        return None if name is None else SharedPixels(name, np.dtype(np.uint8), (len(data),))

    def take(self, handle: SharedPixels) -> np.ndarray:
        """Read the pixels of ``handle`` and delete them (each handle is read once)."""
        return np.frombuffer(self.take_bytes(handle), dtype=handle.dtype).reshape(handle.shape)

    def take_bytes(self, handle: SharedPixels) -> bytes:
        if not _NAME.fullmatch(handle.name):
            raise InvalidInput("the shared pixel handle is not one the decoder issues")
        path = self.directory / handle.name
        expected = int(np.prod(handle.shape, dtype=np.int64)) * handle.dtype.itemsize
        try:
            with path.open("rb") as source:
                data = source.read(expected + 1)
        except FileNotFoundError:
            raise Misconfiguration(
                "shared pixels not found: the decoder and the preprocessor do not share the "
                "pixel exchange directory, or the handle expired"
            ) from None
        finally:
            path.unlink(missing_ok=True)
        if len(data) != expected:
            raise InvalidInput(
                f"shared pixels hold {len(data)} bytes; shape {handle.shape} needs {expected}"
            )
        return data

    def discard(self, handle: SharedPixels) -> None:
        if _NAME.fullmatch(handle.name):
            (self.directory / handle.name).unlink(missing_ok=True)

    def _write(self, buffer: memoryview) -> str | None:
        name = f"px-{secrets.token_hex(16)}"
        path = self.directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(buffer)
        except OSError as err:  # e.g. ENOSPC on a small /dev/shm: fall back, do not fail
            path.unlink(missing_ok=True)
            log.warning("pixel exchange unusable (%s); sending pixels inline", err.strerror)
            return None
        return name

    def sweep(self, now: float | None = None) -> int:
        """Delete handles older than the TTL (never consumed); the count deleted."""
        limit = (time.time() if now is None else now) - self.ttl_seconds
        removed = 0
        for path in self.directory.glob("px-*"):
            try:
                if _NAME.fullmatch(path.name) and path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # taken meanwhile
        return removed
