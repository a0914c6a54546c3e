"""TLS credentials from files: half a configuration refused, certificates re-read on change."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.cli import pki
from services.cli.pki import DevPki, create_dev_pki
from services.common import tls
from services.common.interceptor import ServiceInterceptor
from services.common.tls_files import TlsFiles

TIMEOUT_S = 5.0


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
                                                      "client.pem", "client-key.pem",
                                                      "internal-ca.pem", "internal.pem",
                                                      "internal-key.pem")))  # fmt: skip
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


def _pair(directory: Path, name: str, ca: tuple[Any, Any], server: bool) -> TlsFiles:
    """A leaf of ``ca`` for ``name`` written as PEM (the CA's own PEM beside it)."""
    import datetime

    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    alt = [pki._general_name("127.0.0.1")] if server else []
    key, cert = pki._leaf(ca[1], ca[0], name, usages, alt, now, now + datetime.timedelta(days=1))
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / f"{name}.pem", directory / f"{name}-key.pem", directory / "ca.pem")
    assert files.cert is not None and files.key is not None and files.ca is not None
    files.cert.write_bytes(pki._cert_pem(cert))
    files.key.write_bytes(pki._key_pem(key))
    files.ca.write_bytes(pki._cert_pem(ca[1]))
    return files


def test_an_inner_service_answers_only_the_identities_it_allows(tmp_path: Path) -> None:
    """Defence in depth beside the services' own CA: a certificate that CA signed for
    another name (IMAGING_ALLOWED_PEERS) is refused PERMISSION_DENIED; health stays open."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    ca = pki._ca("test services CA", now, now + datetime.timedelta(days=1))
    served = _pair(tmp_path / "server", "decoder", ca, server=True)
    credentials = tls.server_credentials(served)
    assert credentials is not None
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        interceptors=[ServiceInterceptor("decoder", None, frozenset({"imaging-internal"}))],
    )
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Call": echo}),)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        outcomes = {}
        for name in ("imaging-internal", "intruder"):
            caller = _pair(tmp_path / name, name, ca, server=False)
            channel_credentials = tls.channel_credentials(caller)
            assert channel_credentials is not None
            with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
                call = channel.unary_unary("/test.Echo/Call")
                try:
                    outcomes[name] = call(b"ping", timeout=TIMEOUT_S)
                except grpc.RpcError as err:
                    outcomes[name] = err.code()
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
                )
                assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()
    assert outcomes == {"imaging-internal": b"ping", "intruder": grpc.StatusCode.PERMISSION_DENIED}
