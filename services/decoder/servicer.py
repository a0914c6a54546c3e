"""DicomDecoder RPCs: protobuf in and out, decoding in dispatch.py (in process or the pool)."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import convert
from services.common.listeners import Service
from services.common.metrics import Stage, stage_timer
from services.decoder.dispatch import Decoding

# The one stage this service times; server.py pre-registers its metric series.
STAGE = Stage.DECODE


class DecoderServicer(decoder_pb2_grpc.DicomDecoderServicer):
    def __init__(self, decoding: Decoding) -> None:
        self._decoding = decoding

    def Decode(  # noqa: N802 (gRPC naming)
        self, request: decoder_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.DecodeResponse:
        job = convert.decode_request_from_proto(request)
        dicom = job.dicom
        if job.shared_dicom is not None:
            dicom = self._decoding.receive(job.shared_dicom)
        with stage_timer(Service.DECODER, STAGE):
            image = self._decoding.decode(dicom, job.shared_output, context.add_callback)
        return convert.decode_response_to_proto(image)
