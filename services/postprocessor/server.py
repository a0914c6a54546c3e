"""Entry point of the postprocessing service."""

from __future__ import annotations

import grpc

from services.api.imaging.v1 import postprocessor_pb2, postprocessor_pb2_grpc
from services.common import logs, server
from services.common.listeners import Service
from services.common.pipelines import PipelineRegistry
from services.common.settings import PipelineServiceSettings, PostprocessorSettings
from services.postprocessor import monitoring
from services.postprocessor.servicer import STAGE, PostprocessorServicer

SERVICE_NAME = postprocessor_pb2.DESCRIPTOR.services_by_name["Postprocessor"].full_name


def start(settings: PipelineServiceSettings) -> server.RunningServer:
    """Load the pipelines and serve (tests call this in-process)."""
    registry = PipelineRegistry.load(settings.pipelines_dir)
    monitoring.declare(registry.all())

    def register(srv: grpc.Server) -> None:
        postprocessor_pb2_grpc.add_PostprocessorServicer_to_server(
            PostprocessorServicer(registry), srv
        )

    return server.start(Service.POSTPROCESSOR, settings, register, [SERVICE_NAME], (STAGE,))


def main() -> None:
    settings = PostprocessorSettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
