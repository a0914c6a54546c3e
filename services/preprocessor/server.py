"""Entry point of the preprocessing service."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from services.common import logs, server
from services.common.exchange import PixelExchange
from services.common.listeners import Service
from services.common.pipelines import PipelineRegistry
from services.common.settings import PipelineServiceSettings, PreprocessorSettings
from services.preprocessor.servicer import STAGE, PreprocessorServicer

SERVICE_NAME = preprocessor_pb2.DESCRIPTOR.services_by_name["Preprocessor"].full_name


def start(settings: PipelineServiceSettings) -> server.RunningServer:
    """Load the pipelines and serve (tests call this in-process)."""
    registry = PipelineRegistry.load(settings.pipelines_dir)

    def register(srv: grpc.Server) -> None:
        preprocessor_pb2_grpc.add_PreprocessorServicer_to_server(
            PreprocessorServicer(registry, PixelExchange.configured(settings)), srv
        )

    return server.start(Service.PREPROCESSOR, settings, register, [SERVICE_NAME], (STAGE,))


def main() -> None:
    settings = PreprocessorSettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
