"""DicomDecoder RPCs: protobuf in and out, decoding in the worker pool (pool.py, core.py)."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import convert
from services.common.convert import image_to_proto
from services.common.errors import Misconfiguration
from services.common.exchange import PixelExchange
from services.common.images import Decoded, DecodedImage, SharedImage
from services.common.metrics import stage_timer
from services.common.settings import DecodeLimits
from services.decoder.core import decode_instance, decodes_in_process
from services.decoder.pool import DecoderPool


class DecoderServicer(decoder_pb2_grpc.DicomDecoderServicer):
    def __init__(
        self, pool: DecoderPool, limits: DecodeLimits, exchange: PixelExchange | None = None
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._exchange = exchange

    def Decode(  # noqa: N802 (gRPC naming)
        self, request: decoder_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.DecodeResponse:
        dicom = request.dicom
        if request.HasField("shared_dicom"):
            if self._exchange is None:
                raise Misconfiguration(
                    "the gateway sent the file through a pixel exchange but the decoder has none "
                    "(set IMAGING_PIXEL_EXCHANGE_DIR on both, or on neither)"
                )
            dicom = self._exchange.take_bytes(convert.shared_from_proto(request.shared_dicom))
        with stage_timer("decoder", "decode"):
            image: Decoded
            if decodes_in_process(dicom):
                image = decode_instance(dicom, self._limits)
            else:  # a caller that gives up (cancel, deadline) frees its worker
                image = self._pool.decode(
                    dicom,
                    self._limits,
                    on_abandon=context.add_callback,
                    exchange=self._exchange,
                )
        if isinstance(image, DecodedImage) and request.shared_output and self._exchange:
            handle = self._exchange.put(image.pixels)
            if handle is not None:  # else (exchange full): inline
                image = SharedImage(handle, image.attributes)
        if isinstance(image, SharedImage) and not request.shared_output:
            assert self._exchange is not None  # only it makes shared images
            image = DecodedImage(self._exchange.take(image.pixels), image.attributes)
        return decoder_pb2.DecodeResponse(image=image_to_proto(image))
