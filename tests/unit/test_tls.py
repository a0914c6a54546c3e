"""TLS credentials from files: half a configuration refused, certificates re-read on change."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import tls
from services.common.pki import DevPki, create_dev_pki
from services.common.tls import TlsFiles


def _serving(port: int, pki: DevPki) -> bool:
    credentials = tls.channel_credentials(TlsFiles(pki.client_cert, pki.client_key, pki.ca_cert))
    assert credentials is not None
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, TlsFiles]]:
    first = create_dev_pki(tmp_path / "first")
    live = tmp_path / "live"
    live.mkdir()
    files = TlsFiles(live / "cert.pem", live / "key.pem", live / "ca.pem")
    for source, target in ((first.server_cert, files.cert), (first.server_key, files.key)):
        shutil.copy(source, target)  # type: ignore[arg-type]
    shutil.copy(first.ca_cert, files.ca)  # type: ignore[arg-type]
    credentials = tls.server_credentials(files)
    assert credentials is not None
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, files
    finally:
        server.stop(0).wait()


def test_a_rotated_certificate_is_served_without_a_restart(
    served: tuple[int, TlsFiles], tmp_path: Path
) -> None:
    port, files = served
    first = DevPki(*(tmp_path / "first" / n for n in ("ca.pem", "server.pem", "server-key.pem",
                                                      "client.pem", "client-key.pem")))  # fmt: skip
    second = create_dev_pki(tmp_path / "second")
    assert _serving(port, first) and not _serving(port, second)
    for source, target in (
        (second.server_cert, files.cert),
        (second.server_key, files.key),
        (second.ca_cert, files.ca),
    ):
        shutil.copy(source, target)  # type: ignore[arg-type]
    assert _serving(port, second)  # the next handshake sees the new files
    assert not _serving(port, first)


def test_half_a_configuration_is_refused(tmp_path: Path) -> None:
    pki = create_dev_pki(tmp_path)
    with pytest.raises(ValueError, match="must be set together"):
        tls.server_credentials(TlsFiles(cert=pki.server_cert, key=None, ca=None))
    with pytest.raises(ValueError, match="does not exist"):
        tls.channel_credentials(TlsFiles(ca=tmp_path / "missing.pem"))
    assert (
        tls.server_credentials(TlsFiles()) is None and tls.channel_credentials(TlsFiles()) is None
    )
