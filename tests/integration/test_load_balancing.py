"""The gateway spreads calls over every replica its peer target resolves to.

In Kubernetes the target is a headless Service (dns:///...-peers); here it is an `ipv4:` list
of two real decoder servers: the stack's (a separate process) and one started in this process.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from synthetic import chest_image

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.common.settings import DecoderSettings, GatewaySettings
from services.decoder import server as decoder_server
from services.gateway import server as gateway_server

pytestmark = pytest.mark.integration


def _local_decodes() -> float:
    value = REGISTRY.get_sample_value(
        "imaging_rpc_total", {"service": "decoder", "method": "Decode", "code": "OK"}
    )
    return value or 0.0


def test_gateway_round_robins_over_decoder_replicas(stack: Stack) -> None:
    second = decoder_server.start(DecoderSettings(port=0, metrics_port=0))
    settings = GatewaySettings(
        port=0,
        metrics_port=0,
        decoder_address=f"ipv4:127.0.0.1:{stack.ports.decoder},127.0.0.1:{second.port}",
        preprocessor_address=f"127.0.0.1:{stack.ports.preprocessor}",
        postprocessor_address=f"127.0.0.1:{stack.ports.postprocessor}",
        triton_address=stack.triton_grpc_address,
    )
    gateway = gateway_server.start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            study = [chest_image(np.full((16, 16), v, np.uint8)) for v in range(8)]
            # Warm-up: round_robin only uses subchannels that finished connecting.
            stub.Analyze(gateway_pb2.AnalyzeRequest(instances=study))
            before = _local_decodes()
            for _ in range(2):
                response = stub.Analyze(gateway_pb2.AnalyzeRequest(instances=study))
                assert len(response.findings) == 8
        served_here = _local_decodes() - before
        # round_robin alternates between the two ready subchannels (16 decodes in all).
        assert 4 <= served_here <= 12, served_here
    finally:
        gateway.stop(0)
        second.stop(0)
