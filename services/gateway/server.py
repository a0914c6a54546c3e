"""Entry point of the public gateway service."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import logs, server
from services.common.pipelines import PipelineRegistry
from services.common.settings import GatewaySettings
from services.gateway.clients import (
    DecoderClient,
    PostprocessorClient,
    PreprocessorClient,
    TritonClient,
)
from services.gateway.core import STAGES, Limits, StudyAnalyzer
from services.gateway.servicer import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def start(settings: GatewaySettings) -> tuple[server.RunningServer, StudyAnalyzer]:
    """Wire the analyzer to its peers and start serving (tests call this in-process)."""
    timeout, cap = settings.call_timeout_seconds, settings.max_message_bytes
    analyzer = StudyAnalyzer(
        registry=PipelineRegistry.load(settings.pipelines_dir),
        decoder=DecoderClient(settings.decoder_address, timeout, cap, settings.pixel_exchange()),
        preprocessor=PreprocessorClient(settings.preprocessor_address, timeout, cap),
        inference=TritonClient(settings.triton_address, timeout),
        postprocessor=PostprocessorClient(settings.postprocessor_address, timeout, cap),
        limits=Limits(settings.max_instances, settings.max_study_bytes),
        workers=settings.workers,
    )

    def register(srv: grpc.Server) -> None:
        gateway_pb2_grpc.add_GatewayServicer_to_server(
            GatewayServicer(analyzer, settings.max_instances, settings.max_study_bytes), srv
        )

    running = server.start("gateway", settings, register, [SERVICE_NAME], STAGES)
    return running, analyzer


def main() -> None:
    settings = GatewaySettings()
    logs.configure(settings.log_level)
    running, analyzer = start(settings)
    try:
        server.serve_forever(running, settings.grace_seconds)
    finally:
        analyzer.close()


if __name__ == "__main__":
    main()
