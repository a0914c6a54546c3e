"""Where one file is decoded, and where its pixels go: the decoder's data plane.

Native and deflated syntaxes decode in this process (numpy and zlib only, every cap checked
from the header first); everything else in the worker pool, where a crashing codec costs only
its request. With a pixel exchange (services/common/exchange.py) the file may arrive there and
the pixels stay there for a caller that asks (the gateway): otherwise they come back inline.
"""

from __future__ import annotations

from services.common.errors import Misconfiguration
from services.common.exchange import PixelExchange
from services.common.images import Decoded, DecodedImage, SharedImage, SharedPixels
from services.common.settings import DecodeLimits
from services.decoder.core import decode_instance, decodes_in_process
from services.decoder.pool import DecoderPool, OnAbandon


class Decoding:
    def __init__(
        self, pool: DecoderPool, limits: DecodeLimits, exchange: PixelExchange | None = None
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._exchange = exchange

    def receive(self, shared: SharedPixels) -> bytes:
        """A file the caller left in the exchange."""
        if self._exchange is None:
            raise Misconfiguration(
                "the gateway sent the file through a pixel exchange but the decoder has none "
                "(set IMAGING_PIXEL_EXCHANGE_DIR on both, or on neither)"
            )
        return self._exchange.take_bytes(shared)

    def decode(
        self, dicom: bytes, shared_output: bool, on_abandon: OnAbandon | None = None
    ) -> Decoded:
        """Decode ``dicom``; with ``shared_output`` the pixels stay in the exchange when there
        is one (and room in it). ``on_abandon`` lets a caller that gives up free its worker."""
        image: Decoded
        if decodes_in_process(dicom):
            image = decode_instance(dicom, self._limits)
        else:
            image = self._pool.decode(
                dicom, self._limits, on_abandon=on_abandon, exchange=self._exchange
            )
        if self._exchange is None:
            return image
        if isinstance(image, DecodedImage) and shared_output:
            handle = self._exchange.put(image.pixels)
            return image if handle is None else SharedImage(handle, image.attributes)
        if isinstance(image, SharedImage) and not shared_output:
            return DecodedImage(self._exchange.take(image.pixels), image.attributes)
        return image
