"""Entry point of the DICOM decoder service."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import logs, server
from services.common.settings import DecoderSettings
from services.decoder.core import DecodeLimits
from services.decoder.servicer import DecoderServicer

SERVICE_NAME = decoder_pb2.DESCRIPTOR.services_by_name["DicomDecoder"].full_name


def start(settings: DecoderSettings) -> server.RunningServer:
    """Start serving (tests call this in-process)."""
    limits = DecodeLimits(
        max_bytes=settings.max_encoded_bytes,
        max_pixels=settings.max_pixels,
        max_decoded_bytes=settings.max_decoded_bytes,
    )

    def register(srv: grpc.Server) -> None:
        decoder_pb2_grpc.add_DicomDecoderServicer_to_server(DecoderServicer(limits), srv)

    return server.start("decoder", settings, register, [SERVICE_NAME], ("decode",))


def main() -> None:
    settings = DecoderSettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
