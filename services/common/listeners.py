"""Every service of the platform and the ports it listens on: the one table.

The numbers are those of services sharing one network namespace (a host running
``imaging-platform up``, the gateway's pod with its colocated sidecars), so each service's differ.
Settings defaults, the local stack, the CLI, the rollout tool and the Dockerfile's EXPOSE are
derived from or checked against this table; the chart states its values literally (a user's
override must keep working) and a test compares the rendered chart with it
(tests/unit/test_listeners.py). A listener added later (the ingest's DIMSE and HTTP ports) is a
field here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Service(StrEnum):
    """The platform's own gRPC services: process names, metric and log labels, chart names."""

    GATEWAY = "gateway"
    DECODER = "decoder"
    PREPROCESSOR = "preprocessor"
    POSTPROCESSOR = "postprocessor"
    # DICOM in (services/ingest): not part of the data plane a study passes through; a relay
    # in front of the gateway, started beside it by `imaging-platform up`.
    INGEST = "ingest"


@dataclass(frozen=True)
class Listeners:
    grpc: int  # the API (TLS only when configured)
    metrics: int  # Prometheus /metrics, plaintext
    health: int  # plaintext grpc.health.v1 only, for probes that cannot speak TLS
    dimse: int | None = None  # DICOM upper layer (C-ECHO, C-STORE): the ingest alone


@dataclass(frozen=True)
class TritonListeners:
    http: int
    grpc: int
    metrics: int


LISTENERS: dict[Service, Listeners] = {
    Service.GATEWAY: Listeners(grpc=50051, metrics=9100, health=9300),
    Service.DECODER: Listeners(grpc=50052, metrics=9101, health=9301),
    Service.PREPROCESSOR: Listeners(grpc=50053, metrics=9102, health=9302),
    Service.POSTPROCESSOR: Listeners(grpc=50054, metrics=9103, health=9303),
    # 11112: the IANA-registered DICOM port (PS3.8 G.3), the one PACS administrators expect.
    Service.INGEST: Listeners(grpc=50055, metrics=9104, health=9304, dimse=11112),
}
# The services a study passes through on its way from the gateway to Triton and back.
DATA_PLANE = (Service.DECODER, Service.PREPROCESSOR, Service.POSTPROCESSOR, Service.GATEWAY)
# Triton Inference Server's defaults (tritonserver --http-port/--grpc-port/--metrics-port).
TRITON = TritonListeners(http=8000, grpc=8001, metrics=8002)


@dataclass(frozen=True)
class NatsListeners:
    client: int
    monitoring: int


# nats-server's defaults (-p, -m): the ingest's queue and state engine.
NATS = NatsListeners(client=4222, monitoring=8222)


def loopback(service: Service) -> str:
    """The service's gRPC address on this host."""
    return f"127.0.0.1:{LISTENERS[service].grpc}"
