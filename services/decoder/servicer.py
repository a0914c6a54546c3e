"""DicomDecoder RPCs: protobuf in and out, decoding in dispatch.py (in process or the pool)."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import convert
from services.common.metrics import stage_timer
from services.decoder.dispatch import Decoding


class DecoderServicer(decoder_pb2_grpc.DicomDecoderServicer):
    def __init__(self, decoding: Decoding) -> None:
        self._decoding = decoding

    def Decode(  # noqa: N802 (gRPC naming)
        self, request: decoder_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.DecodeResponse:
        dicom = request.dicom
        if request.HasField("shared_dicom"):
            dicom = self._decoding.receive(convert.shared_from_proto(request.shared_dicom))
        with stage_timer("decoder", "decode"):
            image = self._decoding.decode(dicom, request.shared_output, context.add_callback)
        return decoder_pb2.DecodeResponse(image=convert.image_to_proto(image))
