"""The one table of services and ports (services/common/listeners.py) and everything that
repeats it: settings defaults, the local stack, the CLI, the rollout tool, the Dockerfile's
EXPOSE and the rendered chart. The public names and default ports are stated literally here,
the independent check of the table: changing one of them in one place alone fails a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dockerfile
import pytest
from chart_support import component_name, objects, of_kind

from services.cli.main import parser
from services.cli.stack import SERVICES, Ports, Stack
from services.common.listeners import DATA_PLANE, LISTENERS, NATS, TRITON, Listeners, Service
from services.common.settings import (
    DecoderSettings,
    GatewaySettings,
    IngestSettings,
    PostprocessorSettings,
    PreprocessorSettings,
)
from services.fleet.core import DEFAULT_GRPC_PORT

PUBLIC = {
    "gateway": (50051, 9100, 9300),
    "decoder": (50052, 9101, 9301),
    "preprocessor": (50053, 9102, 9302),
    "postprocessor": (50054, 9103, 9303),
    "ingest": (50055, 9104, 9304),
}
DIMSE_PORT = 11112  # the IANA-registered DICOM port
NATS_PORTS = (4222, 8222)
TRITON_PORTS = (8000, 8001, 8002)


def test_the_table_states_the_public_names_and_ports() -> None:
    assert {s.value: (p.grpc, p.metrics, p.health) for s, p in LISTENERS.items()} == PUBLIC
    assert (TRITON.http, TRITON.grpc, TRITON.metrics) == TRITON_PORTS
    assert (NATS.client, NATS.monitoring) == NATS_PORTS
    assert {s: p.dimse for s, p in LISTENERS.items() if p.dimse} == {Service.INGEST: DIMSE_PORT}
    # The data plane the stack starts by default; the ingest beside it when asked.
    assert set(SERVICES) == set(DATA_PLANE) == set(Service) - {Service.INGEST}
    assert set(Service) == set(LISTENERS)


@pytest.fixture
def no_imaging_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("IMAGING_")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_imaging_env")
def test_settings_defaults_come_from_the_table() -> None:
    for settings, service in [
        (DecoderSettings(), Service.DECODER),
        (PreprocessorSettings(), Service.PREPROCESSOR),
        (PostprocessorSettings(), Service.POSTPROCESSOR),
        (GatewaySettings(), Service.GATEWAY),
        (IngestSettings(), Service.INGEST),
    ]:
        assert (settings.port, settings.metrics_port) == PUBLIC[service][:2], service
    gateway = GatewaySettings()
    assert gateway.decoder_address == "127.0.0.1:50052"
    assert gateway.preprocessor_address == "127.0.0.1:50053"
    assert gateway.postprocessor_address == "127.0.0.1:50054"
    assert gateway.triton_address == "127.0.0.1:8001"
    ingest = IngestSettings()
    assert ingest.dimse_port == DIMSE_PORT
    assert ingest.gateway_address == "127.0.0.1:50051"
    assert ingest.nats_url == "nats://127.0.0.1:4222"
    assert ingest.nats_monitoring_url == "http://127.0.0.1:8222"


def test_the_local_stack_cli_and_rollout_tool_use_the_table(tmp_path: Path) -> None:
    ports = Stack(run_dir=tmp_path, ingest=True).ports
    assert set(Ports().metrics) == set(DATA_PLANE)  # no ingest: none of its ports listed
    for name, (grpc_port, metrics, health) in PUBLIC.items():
        assert (ports.grpc(name), ports.metrics[name], ports.health[name]) == (
            grpc_port,
            metrics,
            health,
        )
    assert (ports.triton_http, ports.triton_grpc, ports.triton_metrics) == TRITON_PORTS
    assert (ports.dimse, ports.nats, ports.nats_monitoring) == (DIMSE_PORT, *NATS_PORTS)
    assert parser().parse_args(["studies", "list"]).ingest == "127.0.0.1:50055"
    analyze = parser().parse_args(["analyze", "x.dcm"])
    assert analyze.gateway == "127.0.0.1:50051"
    assert DEFAULT_GRPC_PORT == 8001


def test_the_image_exposes_every_listener_of_every_service() -> None:
    listed = {port for ports in PUBLIC.values() for port in ports}
    assert dockerfile.exposed_ports() == listed | {DIMSE_PORT}


def container_ports(obj: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        c["name"]: {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for c in obj["spec"]["template"]["spec"]["containers"]
    }


def as_named(listeners: Listeners, suffix: str = "", health: bool = True) -> dict[str, int]:
    named = {f"grpc{suffix}": listeners.grpc, f"metrics{suffix}": listeners.metrics}
    if health:
        named[f"health{suffix}"] = listeners.health
    return named


def test_the_rendered_chart_listens_where_the_table_says() -> None:
    """One pod shares one network namespace: the gateway's pod (decoder and preprocessor as
    sidecars) uses each service's own ports; a service alone in its pod (the postprocessor,
    every service with dataPlane.colocated false) uses the first set, the gateway's."""
    objs = objects("mtls")  # with TLS, so the plaintext health ports are opened too
    deployments = {o["metadata"]["name"]: o for o in of_kind(objs, "Deployment")}
    gateway_pod = container_ports(deployments[component_name("gateway")])
    assert set(gateway_pod) == {"gateway", "decoder", "preprocessor"}
    assert gateway_pod["gateway"] == as_named(LISTENERS[Service.GATEWAY])
    assert gateway_pod["decoder"] == as_named(LISTENERS[Service.DECODER], "-dec")
    assert gateway_pod["preprocessor"] == as_named(LISTENERS[Service.PREPROCESSOR], "-pre")
    alone = container_ports(deployments[component_name("postprocessor")])
    assert alone == {"postprocessor": as_named(LISTENERS[Service.GATEWAY])}
    triton = container_ports(deployments[component_name("triton")])["triton"]
    assert triton == {"http": TRITON.http, "grpc": TRITON.grpc, "metrics": TRITON.metrics}


def test_separate_pods_each_listen_on_the_first_set() -> None:
    deployments = of_kind(objects("separate-pods"), "Deployment")
    names = {d["metadata"]["name"] for d in deployments}
    for service in DATA_PLANE:  # the ingest is not in the chart yet
        assert component_name(service.value) in names
        (ports,) = container_ports(
            next(d for d in deployments if d["metadata"]["name"] == component_name(service))
        ).values()
        assert ports == as_named(LISTENERS[Service.GATEWAY], health=False)
