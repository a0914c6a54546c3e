"""Server reflection is on by default and can be switched off (IMAGING_REFLECTION=false)."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.settings import PipelineServiceSettings
from services.postprocessor import server as postprocessor_server

pytestmark = pytest.mark.integration


def _list_services(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        return [s.name for s in reply.list_services_response.service]


@pytest.mark.parametrize("enabled", [True, False])
def test_reflection_can_be_switched_off(enabled: bool) -> None:
    running = postprocessor_server.start(
        PipelineServiceSettings(port=0, metrics_port=0, reflection=enabled)
    )
    try:
        if enabled:
            assert "imaging.v1.Postprocessor" in _list_services(running.port)
        else:
            with pytest.raises(grpc.RpcError) as caught:
                _list_services(running.port)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop(0)
